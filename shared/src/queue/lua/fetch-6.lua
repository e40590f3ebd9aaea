-- fetch: promote due delayed jobs (a bounded chunk), then lease up to N ready jobs.
--
-- KEYS[1] wait     LIST  ready job IDs
-- KEYS[2] active   ZSET  job ID -> lease expiry (ms)
-- KEYS[3] delayed  ZSET  job ID -> run_at (ms)
-- KEYS[4] marker   ZSET  wake-up marker for blocked workers
-- KEYS[5] token    STRING fencing-token counter (INCR)
-- KEYS[6] dead     ZSET  dead-lettered job ID -> time (ms)
--
-- ARGV[1] prefix, ARGV[2] now (ms), ARGV[3] lease TTL (ms), ARGV[4] max jobs,
-- ARGV[5] worker name, ARGV[6] promote chunk
--
-- Returns { leases, next_due } where each lease is
-- { id, token, attempt, spec, max_attempts, deadline_at, created_at } and next_due is the
-- run_at of the earliest delayed job ('' if none), so an idle worker knows how long to block.
-- An ID without a job record is dead-lettered with the reason, never dropped.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local worker = ARGV[5]
local chunk = tonumber(ARGV[6])

local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, chunk)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[3], id)
  local jk = job_key(prefix, id)
  if redis.call('EXISTS', jk) == 1 then
    set_status(prefix, jk, 'queued')
    redis.call('HDEL', jk, 'run_at')
    redis.call('LPUSH', KEYS[1], id)
  end
end

local leases = {}
while #leases < max do
  local id = redis.call('RPOP', KEYS[1])
  if not id then
    break
  end
  local jk = job_key(prefix, id)
  local status = redis.call('HGET', jk, 'status')
  if not status then
    redis.call('HSET', jk, 'id', id, 'status', 'dead', 'attempts', 0, 'finished_at', now,
      'error', cjson.encode({ class = 'permanent',
        message = 'undecodable job: no job record for this ID' }))
    redis.call('ZADD', KEYS[6], now, id)
    redis.call('PUBLISH', prefix .. 'done', id)
  elseif status == 'queued' then
    local token = redis.call('INCR', KEYS[5])
    local attempt = redis.call('HINCRBY', jk, 'attempts', 1)
    set_status(prefix, jk, 'running')
    redis.call('HSET', jk, 'token', token, 'worker', worker, 'started_at', now,
      'lease_until', now + lease_ms)
    redis.call('HSETNX', jk, 'first_started_at', now)
    redis.call('ZADD', KEYS[2], now + lease_ms, id)
    local f = redis.call('HMGET', jk, 'spec', 'max_attempts', 'deadline_at', 'created_at')
    leases[#leases + 1] = { id, tostring(token), attempt, f[1] or '', f[2] or '1',
      f[3] or '0', f[4] or '0' }
  end
  -- any other status (cancelled while queued, ...) is a stale list entry: skip it
end

if redis.call('LLEN', KEYS[1]) > 0 then
  -- more work left: wake another idle worker
  redis.call('ZADD', KEYS[4], 0, '0')
end
local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return { leases, head[2] or '' }
