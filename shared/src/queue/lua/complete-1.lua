-- complete: write the result of a successful attempt and end the job `succeeded`.
-- Only the attempt holding the current fencing token may do this, so a stale attempt
-- (its lease was reclaimed) can never overwrite the result: exactly-once result.
--
-- KEYS[1] active  ZSET job ID -> lease expiry (ms)
--
-- ARGV[1] prefix, ARGV[2] job ID, ARGV[3] token, ARGV[4] now (ms),
-- ARGV[5] result JSON, ARGV[6] attempt record JSON, ARGV[7] result TTL (ms)
--
-- Returns 1 done, 2 already done by this token (a retried call), 0 refused (stale).
local prefix = ARGV[1]
local id = ARGV[2]
local jk = job_key(prefix, id)
local fence = check_fence(jk, ARGV[3])
if fence == 'settled' then
  return 2
elseif fence ~= 'ok' then
  return 0
end
local now = tonumber(ARGV[4])
redis.call('ZREM', KEYS[1], id)
set_status(prefix, jk, 'succeeded')
redis.call('HSET', jk, 'result', ARGV[5], 'settled', ARGV[3])
-- earlier attempts' errors stay in the attempt history, not on a succeeded job
redis.call('HDEL', jk, 'cancel', 'lease_until', 'error')
redis.call('RPUSH', prefix .. 'attempts:' .. id, ARGV[6])
finish(prefix, jk, id, now, tonumber(ARGV[7]))
return 1
