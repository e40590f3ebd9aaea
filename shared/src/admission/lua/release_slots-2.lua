-- release_slots: sandboxes stopped running (killed, paused, found gone) or a create in
-- flight failed: their slots are free. Any worker may release any sandbox's slot (a
-- worker that kills a dead worker's sandbox frees its slot at once, or pauses an idle
-- agent another worker launched). Each released holder is remembered for a hold, so
-- that the worker that held it does not put it back at its next renewal.
--
-- KEYS[1] slots     ZSET holder -> hold expiry (ms, Redis clock)
-- KEYS[2] released  ZSET holder -> when it may be forgotten (ms, Redis clock)
--
-- ARGV[1] hold (ms), ARGV[2..] holders
--
-- Returns how many of them held a slot.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]) + 1000)
return n
