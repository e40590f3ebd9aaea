-- enqueue: write one or more jobs and make them ready (or delayed), atomically.
--
-- KEYS[1] wait     LIST  ready job IDs (LPUSH here, RPOP at fetch: FIFO)
-- KEYS[2] delayed  ZSET  job ID -> run_at (ms)
-- KEYS[3] marker   ZSET  one member; its presence wakes a worker blocked in BZPOPMIN
--
-- ARGV[1] prefix, ARGV[2] now (ms), ARGV[3] idempotency TTL (ms),
-- then 7 per job: id, spec JSON, max_attempts, deadline_at (ms, 0 = none),
--                 batch ID ('' = none), idempotency key ('' = none), run_at (ms, 0 = now)
--
-- Returns, per job, the ID it exists under: its own, or the ID of the job that already
-- holds its idempotency key. A job ID that already exists is not written twice, so a
-- retried call (after a lost reply) is harmless.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local idem_ttl = tonumber(ARGV[3])
local out = {}
local woke = false
local deltas = {}
for i = 4, #ARGV, 7 do
  local id = ARGV[i]
  local batch = ARGV[i + 4]
  local idem = ARGV[i + 5]
  local run_at = tonumber(ARGV[i + 6])
  local result_id = id
  local skip = false
  if idem ~= '' then
    local ik = prefix .. 'idem:' .. idem
    local existing = redis.call('GET', ik)
    if existing then
      result_id = existing
      skip = true
    else
      redis.call('SET', ik, id, 'PX', idem_ttl)
    end
  end
  local jk = job_key(prefix, id)
  if not skip and redis.call('EXISTS', jk) == 1 then
    skip = true
  end
  if not skip then
    redis.call('HSET', jk, 'spec', ARGV[i + 1], 'status', 'queued', 'attempts', 0,
      'max_attempts', ARGV[i + 2], 'deadline_at', ARGV[i + 3], 'created_at', now,
      'batch', batch)
    if batch ~= '' then
      count_move(deltas, batch, nil, 'total')
      count_move(deltas, batch, nil, 'queued')
    end
    if run_at > now then
      redis.call('HSET', jk, 'run_at', run_at)
      redis.call('ZADD', KEYS[2], run_at, id)
    else
      redis.call('LPUSH', KEYS[1], id)
    end
    woke = true
  end
  out[#out + 1] = result_id
end
write_counts(prefix, deltas, nil)
if woke then
  redis.call('ZADD', KEYS[3], 0, '0')
end
return out
