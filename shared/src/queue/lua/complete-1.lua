-- complete: write the results of successful attempts and end their jobs `succeeded`.
-- Only the attempt holding the current fencing token may do this, so a stale attempt
-- (its lease was reclaimed) can never overwrite a result: exactly-once result.
-- Several completions travel in one call when they arrive together (the worker
-- batches them while a call is in flight), which saves a round trip per job.
--
-- KEYS[1] active  ZSET job ID -> lease expiry (ms)
--
-- ARGV[1] prefix, ARGV[2] now (ms), ARGV[3] result TTL (ms),
-- then 4 per completion: job ID, token, result JSON, attempt record JSON
--
-- Returns one code per completion: 1 done, 2 already done by this token (a retried
-- call), 0 refused (stale).
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 4 do
  local id = ARGV[i]
  local token = ARGV[i + 1]
  local jk = job_key(prefix, id)
  local fence = check_fence(jk, token)
  if fence == 'settled' then
    out[#out + 1] = 2
  elseif fence ~= 'ok' then
    out[#out + 1] = 0
  else
    redis.call('ZREM', KEYS[1], id)
    set_status(prefix, jk, 'succeeded')
    redis.call('HSET', jk, 'result', ARGV[i + 2], 'settled', token)
    -- earlier attempts' errors stay in the attempt history, not on a succeeded job
    redis.call('HDEL', jk, 'cancel', 'lease_until', 'error')
    redis.call('RPUSH', prefix .. 'attempts:' .. id, ARGV[i + 3])
    finish(prefix, jk, id, now, ttl)
    out[#out + 1] = 1
  end
end
return out
