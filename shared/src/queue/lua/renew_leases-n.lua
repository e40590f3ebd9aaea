-- renew_leases: extend the leases a worker holds, all in one call.
--
-- KEYS[1] active  ZSET job ID -> lease expiry (ms, Redis' clock)
-- KEYS[1 + i] the record `job:<id>` of the i-th lease
--
-- ARGV[1] lease TTL (ms), then pairs: job ID, token
--
-- Returns one code per pair: 1 renewed, 2 renewed but cancellation was requested,
-- 0 lost (the lease expired and was reclaimed, or the job was settled): the holder must
-- stop the attempt, whose writes will be refused.
--
-- A renewal only ever extends a lease (`GT`): it must not undo what reclaim added for
-- a stall of the whole queue.
local now = redis_now()
local lease_ms = tonumber(ARGV[1])
local out = {}
local k = 1
for i = 2, #ARGV, 2 do
  k = k + 1
  local id = ARGV[i]
  local jk = KEYS[k]
  local f = redis.call('HMGET', jk, 'token', 'status', 'cancel')
  if f[1] == ARGV[i + 1] and f[2] == 'running' and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', 'GT', now + lease_ms, id)
    if f[3] == '1' then
      out[#out + 1] = 2
    else
      out[#out + 1] = 1
    end
  else
    out[#out + 1] = 0
  end
end
return out
