-- due_delayed: the first step of promoting delayed jobs (retries and scheduled jobs
-- whose time has come) to `wait`. It names them; `promote_delayed` moves them. The
-- caller reads each job's batch between the two, so each step touches only keys it
-- was given (docs/ARCHITECTURE.md, "Keys and Redis Cluster"). Changes nothing.
--
-- KEYS[1] delayed  ZSET job ID -> run_at (ms)
--
-- ARGV[1] how many at most (queue.promote_chunk)
--
-- Returns the IDs due by Redis' clock, earliest first.
local now, now_s = redis_now()
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_s, 'LIMIT', '0', ARGV[1])
