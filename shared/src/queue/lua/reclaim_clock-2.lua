-- reclaim_clock: the first step of reclaiming expired leases. It keeps the reclaim
-- clock, makes up for a stall of the whole queue, and names the leases that have
-- expired by Redis' clock; `reclaim_expired` (the second step) takes them back. The
-- caller reads what it needs to name every key of those jobs (their batch and cache
-- records, the jobs waiting on a cache entry) between the two, so each step touches
-- only keys it was given (docs/ARCHITECTURE.md, "Keys and Redis Cluster"). This step
-- changes no job: a crash after it loses nothing, the next pass finds them again.
--
-- Stalls of the whole queue. Every worker runs this every reclaim interval; the time
-- of the last call, by Redis's own clock, is kept in KEYS[2]. Leases are compared with
-- Redis' clock too, never the caller's: a worker whose clock runs ahead does not take
-- the others' leases early. A longer gap than ARGV[2] means no worker could renew
-- either (Redis was frozen, or out of every worker's reach), not that the holders
-- died. Then, before anything is reclaimed:
-- - every lease is extended by the gap, so holders get back the time they could not use;
-- - nothing is reclaimed for ARGV[3] ms, while the calls queued during the stall run
--   and the holders renew.
--
-- KEYS[1] active, KEYS[2] reclaim_clock
--
-- ARGV[1] max jobs per call, ARGV[2] stall (ms): a longer gap between two calls is
-- made up for, ARGV[3] grace (ms): how long reclaiming waits after a stall
--
-- Returns the IDs whose lease expired (at most ARGV[1]), oldest expiry first.
local now = redis_now()
local clock_key = KEYS[2]
local seen = redis.call('HMGET', clock_key, 'last', 'resume_at')
local last = tonumber(seen[1])
local resume_at = tonumber(seen[2]) or 0
if last == nil or now > last then
  redis.call('HSET', clock_key, 'last', now)
end
if last and now - last > tonumber(ARGV[2]) then
  local gap = now - last
  local leases = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #leases, 2 do
    redis.call('ZADD', KEYS[1], 'XX', tonumber(leases[i + 1]) + gap, leases[i])
  end
  resume_at = now + tonumber(ARGV[3])
  redis.call('HSET', clock_key, 'resume_at', resume_at)
end
if now < resume_at then
  return {}
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
