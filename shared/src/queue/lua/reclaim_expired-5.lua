-- reclaim_expired: take back jobs whose lease expired (their worker crashed, was
-- killed, or stalled past the TTL). Each lost lease is recorded as an attempt of class
-- `lease_lost`; the job runs again at once, or is dead-lettered once its attempts are
-- spent. Its old token stays behind, so the stale holder's writes are refused.
--
-- Stalls of the whole queue. Every worker calls this script every reclaim interval; the
-- time of the last call, by Redis's own clock, is kept in `<prefix>reclaim_clock`.
-- Leases are compared with Redis' clock too, never the caller's: a worker whose clock
-- runs ahead does not take the others' leases early. A
-- longer gap than ARGV[5] means no worker could renew either (Redis was frozen, or out
-- of every worker's reach), not that the holders died. Then, before anything is
-- reclaimed:
-- - every lease is extended by the gap, so holders get back the time they could not use;
-- - nothing is reclaimed for ARGV[6] ms, while the calls queued during the stall run
--   and the holders renew.
--
-- KEYS[1] active, KEYS[2] wait, KEYS[3] marker, KEYS[4] dead, KEYS[5] reclaim_clock,
-- then the index tail (_index.lua)
-- (the expired jobs' records, attempts and batch records are found in `active`: not
-- declared; docs/ARCHITECTURE.md, "Keys and Redis Cluster")
--
-- ARGV[1] prefix, ARGV[2] max jobs per call, ARGV[3] result TTL (ms),
-- ARGV[4] stall (ms): a longer gap between two calls is made up for,
-- ARGV[5] grace (ms): how long reclaiming waits after a stall
--
-- Returns the number of jobs reclaimed.
local prefix = ARGV[1]
local now = redis_now()
local clock_key = KEYS[5]
local seen = redis.call('HMGET', clock_key, 'last', 'resume_at')
local last = tonumber(seen[1])
local resume_at = tonumber(seen[2]) or 0
if last == nil or now > last then
  redis.call('HSET', clock_key, 'last', now)
end
if last and now - last > tonumber(ARGV[4]) then
  local gap = now - last
  local leases = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #leases, 2 do
    redis.call('ZADD', KEYS[1], 'XX', tonumber(leases[i + 1]) + gap, leases[i])
  end
  resume_at = now + tonumber(ARGV[5])
  redis.call('HSET', clock_key, 'resume_at', resume_at)
end
if now < resume_at then
  return 0
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local requeued = false
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local jk = job_key(prefix, id)
  local f = redis.call('HMGET', jk, 'attempts', 'meta', 'worker', 'started_at', 'cancel', 'status')
  if f[6] == 'running' then
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
      finish(prefix, jk, id, now, tonumber(ARGV[3]))
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
if requeued then
  redis.call('ZADD', KEYS[3], 0, '0')
end
ix_flush(now, string.format('%d', now))
return #ids
