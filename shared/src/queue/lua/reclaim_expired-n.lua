-- reclaim_expired: take back jobs whose lease expired (their worker crashed, was
-- killed, or stalled past the TTL), as named by `reclaim_clock` (the first step; the
-- stall rules live there). Each lost lease is recorded as an attempt of class
-- `lease_lost`; the job runs again at once, or is dead-lettered once its attempts are
-- spent. Its old token goes, so the stale holder's writes are refused. A job a fetch
-- claimed and never leased (claim-5.lua: still `queued`) goes back to the front of
-- `wait`, no attempt charged.
--
-- Every key this script touches is in KEYS: the caller names, per job, its record,
-- attempts, batch record and cache entry, and the jobs waiting on that entry, from
-- what it read after the first step. Things may have moved in between, so each job is
-- checked again here: its lease must still be in `active` and expired by Redis' clock,
-- and every key reclaiming it could touch must have been declared; otherwise it is
-- left alone (still expired, the next pass names it afresh).
--
-- KEYS[1] active, KEYS[2] wait, KEYS[3] marker, KEYS[4] dead, then any number of job,
-- attempts, batch, cache and follower job keys, in any order, then the index tail
-- (_index.lua)
--
-- ARGV[1] prefix, ARGV[2] result TTL (ms), ARGV[3..] the expired job IDs
--
-- Returns the number of jobs taken off `active`.
local prefix = ARGV[1]
local now = redis_now()
local result_ttl = tonumber(ARGV[2])
local declared = {}
for i = 5, #KEYS do
  declared[KEYS[i]] = true
end

-- Whether every key reclaiming job `id` (record `jk`) may touch was declared.
local function all_declared(id, jk, batch, cache)
  if not (declared[jk] and declared[prefix .. 'attempts:' .. id]) then
    return false
  end
  if batch and batch ~= '' and not declared[prefix .. 'batch:' .. batch] then
    return false
  end
  return cache_keys_declared(prefix, cache, declared)
end

local taken = 0
local requeued = false
for i = 3, #ARGV do
  local id = ARGV[i]
  local jk = job_key(prefix, id)
  local expiry = tonumber(redis.call('ZSCORE', KEYS[1], id))
  if expiry and expiry <= now and declared[jk] then
    local f = redis.call('HMGET', jk, 'attempts', 'meta', 'worker', 'started_at', 'cancel',
      'status', 'batch', 'cache', 'in_wait')
    if f[6] ~= 'running' then
      redis.call('ZREM', KEYS[1], id)
      taken = taken + 1
      if f[6] == 'queued' or not f[6] or f[9] == '1' then
        -- claimed by a fetch that never leased it (claim-5.lua; its worker died in
        -- between): it was popped from the front of `wait`, so it goes back there, where
        -- the next fetch leases it (or drops a cancelled one, or dead-letters an ID
        -- without a record, as it would have)
        redis.call('RPUSH', KEYS[2], id)
        requeued = true
      end
      -- any other status: a stale entry (the job settled), it only leaves `active`
    elseif all_declared(id, jk, f[7], f[8]) then
      redis.call('ZREM', KEYS[1], id)
      taken = taken + 1
      local attempt = tonumber(f[1]) or 0
      local message = 'lease expired: worker ' .. (f[3] or '?') ..
        ' stopped renewing it (crashed, killed or stalled)'
      local err = cjson.encode({ class = 'lease_lost', message = message })
      redis.call('RPUSH', prefix .. 'attempts:' .. id, cjson.encode({
        attempt = attempt, worker = f[3] or '', started_at = tonumber(f[4]) or 0,
        ended_at = now, outcome = 'lease_lost', error = message }))
      redis.call('HSET', jk, 'error', err)
      -- The stale holder's token goes: its complete/fail/renew calls are refused.
      redis.call('HDEL', jk, 'token')
      keep_first_start(jk, f[4])
      hist_add('failed', 1)
      if f[5] == '1' then
        set_status(prefix, jk, 'cancelled')
        redis.call('HDEL', jk, 'cancel')
        finish(prefix, jk, id, now, result_ttl)
        cache_hand_over(prefix, jk, id, KEYS[2], KEYS[3])
      elseif attempt >= (tonumber(string.match(job_meta(jk, f[2]), '^%d+')) or 1) then
        bury(prefix, jk, id, now, KEYS[4])
        cache_hand_over(prefix, jk, id, KEYS[2], KEYS[3])
      else
        set_status(prefix, jk, 'queued')
        redis.call('RPUSH', KEYS[2], id)
        hist_add('retried', 1)
        requeued = true
      end
    end
  end
end
ix_flush(now, string.format('%d', now))
if requeued then
  redis.call('ZADD', KEYS[3], 0, '0')
end
return taken
