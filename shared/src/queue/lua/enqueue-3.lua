-- enqueue: write one or more jobs and make them ready (or delayed), atomically.
--
-- KEYS[1] wait     LIST  ready job IDs (LPUSH here, RPOP at fetch: FIFO)
-- KEYS[2] delayed  ZSET  job ID -> run_at (ms)
-- KEYS[3] marker   ZSET  one member; its presence wakes a worker blocked in BZPOPMIN
--
-- ARGV[1] prefix, ARGV[2] now (ms), ARGV[3] idempotency TTL (ms), ARGV[4] arguments per
-- job (3 or 6), then per job: id, spec JSON, meta,
--   and with 6 also: batch ID ('' = none), idempotency key ('' = none), run_at (ms, 0 = now).
-- (3 when no job of the call has any of the last three: fewer arguments to convert.)
-- meta is "<max_attempts><TAB><deadline_at ms, 0 = none><TAB><created_at ms>", what a
-- worker needs besides the spec, kept as one field: fetch returns it as it is.
--
-- Fields at their default are not written: no `attempts` (0), no `batch` outside a batch.
--
-- Returns, per job, the ID it exists under: its own, or the ID of the job that already
-- holds its idempotency key. A job ID that already exists is not written twice, so a
-- retried call (after a lost reply) is harmless.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local idem_ttl = ARGV[3]
local pj = prefix .. 'job:'
local out = {}
local woke = false
local deltas = {}
local per = tonumber(ARGV[4])
-- Refuse a call that could not be written whole before writing any of it.
if per == 6 and (tonumber(idem_ttl) or 0) < 1 then
  for i = 5, #ARGV, per do
    if ARGV[i + 4] ~= '' then
      return redis.error_reply('ERR idempotency TTL must be at least 1 ms, got ' .. idem_ttl)
    end
  end
end
for i = 5, #ARGV, per do
  local id = ARGV[i]
  local batch, idem, run_at_s = '', '', '0'
  if per == 6 then
    batch, idem, run_at_s = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  end
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
  local jk = pj .. id
  if not skip and redis.call('EXISTS', jk) == 1 then
    skip = true
  end
  if not skip then
    if batch == '' then
      redis.call('HSET', jk, 'spec', ARGV[i + 1], 'status', 'queued', 'meta', ARGV[i + 2])
    else
      redis.call('HSET', jk, 'spec', ARGV[i + 1], 'status', 'queued', 'meta', ARGV[i + 2],
        'batch', batch)
      count_move(deltas, batch, nil, 'total')
      count_move(deltas, batch, nil, 'queued')
    end
    if run_at_s ~= '0' and tonumber(run_at_s) > now then
      redis.call('HSET', jk, 'run_at', run_at_s)
      redis.call('ZADD', KEYS[2], run_at_s, id)
    else
      redis.call('LPUSH', KEYS[1], id)
    end
    woke = true
  end
  out[#out + 1] = result_id
end
write_counts(prefix, deltas, nil, true)
if woke then
  redis.call('ZADD', KEYS[3], '0', '0')
end
return out
