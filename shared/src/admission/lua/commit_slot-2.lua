-- commit_slot: a create or resume went through; its reserved slot now belongs to the
-- sandbox it started. The sandbox is running whatever the count says, so it gets its
-- slot even if the reservation had expired meanwhile (or the sandbox already had one);
-- an earlier release of it (when it was paused) no longer applies.
--
-- KEYS[1] slots     ZSET holder -> hold expiry (ms, Redis clock)
-- KEYS[2] released  ZSET holder -> when it may be forgotten (ms, Redis clock)
--
-- ARGV[1] reservation holder ("create:<uuid>"), ARGV[2] sandbox ID, ARGV[3] hold (ms)
--
-- Returns 1 when the reservation was still held, 0 when it had expired.
local held = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[3]), ARGV[2])
return held
