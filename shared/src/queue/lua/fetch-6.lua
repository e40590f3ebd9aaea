-- fetch: promote due delayed jobs (a bounded chunk), then lease up to N ready jobs.
--
-- KEYS[1] wait     LIST  ready job IDs
-- KEYS[2] active   ZSET  job ID -> lease expiry (ms)
-- KEYS[3] delayed  ZSET  job ID -> run_at (ms)
-- KEYS[4] marker   ZSET  wake-up marker for blocked workers
-- KEYS[5] token    STRING fencing-token counter
-- KEYS[6] dead     ZSET  dead-lettered job ID -> time (ms)
--
-- ARGV[1] prefix, ARGV[2] now (ms), ARGV[3] lease TTL (ms), ARGV[4] max jobs,
-- ARGV[5] worker name, ARGV[6] promote chunk
--
-- Returns { leases, next_due } where each lease is
-- { id, token, attempt, spec, max_attempts, deadline_at, created_at } and next_due is the
-- run_at of the earliest delayed job ('' if none), so an idle worker knows how long to block.
-- An ID without a job record is dead-lettered with the reason, never dropped.
-- Per leased job: one HMGET, one HSET, one ZADD (the hot path; see BENCHMARKS.md).
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local worker = ARGV[5]
local chunk = tonumber(ARGV[6])
local deltas = {}

local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, chunk)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[3], id)
  local jk = job_key(prefix, id)
  local f = redis.call('HMGET', jk, 'status', 'batch')
  if f[1] then
    count_move(deltas, f[2], f[1], 'queued')
    redis.call('HSET', jk, 'status', 'queued')
    redis.call('HDEL', jk, 'run_at')
    redis.call('LPUSH', KEYS[1], id)
  end
end

local leases = {}
local ids = redis.call('RPOP', KEYS[1], max)
if ids then
  -- Fencing tokens for this call: one INCRBY, then counted down per lease.
  local top = redis.call('INCRBY', KEYS[5], #ids)
  local next_token = top - #ids
  for _, id in ipairs(ids) do
    local jk = job_key(prefix, id)
    local f = redis.call('HMGET', jk, 'status', 'batch', 'attempts', 'spec', 'max_attempts',
      'deadline_at', 'created_at', 'first_started_at')
    local status = f[1]
    if not status then
      redis.call('HSET', jk, 'id', id, 'status', 'dead', 'attempts', 0, 'finished_at', now,
        'error', cjson.encode({ class = 'permanent',
          message = 'undecodable job: no job record for this ID' }))
      redis.call('ZADD', KEYS[6], now, id)
      redis.call('PUBLISH', prefix .. 'done', id)
    elseif status == 'queued' then
      next_token = next_token + 1
      local attempt = (tonumber(f[3]) or 0) + 1
      count_move(deltas, f[2], status, 'running')
      if f[8] then
        redis.call('HSET', jk, 'status', 'running', 'attempts', attempt, 'token', next_token,
          'worker', worker, 'started_at', now)
      else
        redis.call('HSET', jk, 'status', 'running', 'attempts', attempt, 'token', next_token,
          'worker', worker, 'started_at', now, 'first_started_at', now)
      end
      redis.call('ZADD', KEYS[2], now + lease_ms, id)
      leases[#leases + 1] = { id, tostring(next_token), attempt, f[4] or '', f[5] or '1',
        f[6] or '0', f[7] or '0' }
    end
    -- any other status (cancelled while queued, ...) is a stale list entry: skip it
  end
end
write_counts(prefix, deltas, nil)

if ids and #ids == max and redis.call('LLEN', KEYS[1]) > 0 then
  -- more work left: wake another idle worker
  redis.call('ZADD', KEYS[4], 0, '0')
end
local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return { leases, head[2] or '' }
