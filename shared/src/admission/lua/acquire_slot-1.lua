-- acquire_slot: take one of the plan's running-sandbox slots for a holder, if one is
-- free. Holds that expired (their worker stopped renewing them: it was killed) are
-- reclaimed first, so a dead worker cannot keep slots.
--
-- KEYS[1] slots  ZSET holder -> hold expiry (ms, Redis clock). A holder is a sandbox ID
--                or "create:<uuid>" for a create or resume in flight.
--
-- ARGV[1] holder, ARGV[2] cap (the plan's concurrent sandboxes), ARGV[3] hold (ms)
--
-- Returns {1, 0} taken (a holder that already has a slot keeps it, renewed: a retried
-- call after a lost reply), or {0, ms} all taken: ms until the earliest hold expires.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local expiry = now + tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], expiry, ARGV[1])
  return { 1, 0 }
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], expiry, ARGV[1])
  return { 1, 0 }
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return { 0, math.max(0, tonumber(first[2]) - now) }
