-- reclaim_expired: take back jobs whose lease expired (their worker crashed, was
-- killed, or stalled past the TTL). Each lost lease is recorded as an attempt of class
-- `lease_lost`; the job runs again at once, or is dead-lettered once its attempts are
-- spent. Its old token stays behind, so the stale holder's writes are refused.
--
-- KEYS[1] active, KEYS[2] wait, KEYS[3] marker, KEYS[4] dead
--
-- ARGV[1] prefix, ARGV[2] now (ms), ARGV[3] max jobs per call, ARGV[4] result TTL (ms)
--
-- Returns the number of jobs reclaimed.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
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
    if f[5] == '1' then
      set_status(prefix, jk, 'cancelled')
      redis.call('HDEL', jk, 'cancel')
      finish(prefix, jk, id, now, tonumber(ARGV[4]))
    elseif attempt >= (tonumber(string.match(job_meta(jk, f[2]), '^%d+')) or 1) then
      bury(prefix, jk, id, now, KEYS[4])
    else
      set_status(prefix, jk, 'queued')
      redis.call('RPUSH', KEYS[2], id)
      requeued = true
    end
  end
end
if requeued then
  redis.call('ZADD', KEYS[3], 0, '0')
end
return #ids
