-- enqueue: write one or more jobs and make them ready (or delayed), atomically.
--
-- KEYS[1] wait     LIST  ready job IDs (LPUSH here, RPOP at fetch: FIFO)
-- KEYS[2] delayed  ZSET  job ID -> run_at (ms)
-- KEYS[3] marker   ZSET  one member; its presence wakes a worker blocked in BZPOPMIN
-- then per job: its record `job:<id>`, and with 6 arguments per job also its
--   idempotency key `idem:<key>` (`idem:` alone when it has none: declared, unused);
-- then the record `batch:<id>` of each batch the jobs belong to, once each.
--
-- ARGV[1] prefix, ARGV[2] idempotency TTL (ms), ARGV[3] arguments per job (3 or 6),
-- then per job: id, spec JSON, meta,
--   and with 6 also: batch ID ('' = none), idempotency key ('' = none), run_at (ms by
--   Redis' clock, 0 = now).
-- (3 when no job of the call has any of the last three: fewer arguments to convert.)
-- meta is "<max_attempts><TAB><deadline in ms from now, 0 = none>"; the job stores
-- "<max_attempts><TAB><deadline_at ms, 0 = none><TAB><created_at ms>", by Redis' clock,
-- what a worker needs besides the spec, kept as one field: fetch returns it as it is.
--
-- Fields at their default are not written: no `attempts` (0), no `batch` outside a batch.
--
-- Returns, per job, the ID it exists under: its own, or the ID of the job that already
-- holds its idempotency key. A job ID that already exists is not written twice, so a
-- retried call (after a lost reply) is harmless.
local prefix = ARGV[1]
local now, now_s = redis_now()
local idem_ttl = ARGV[2]
local out = {}
local woke = false
local deltas = {}
local per = tonumber(ARGV[3])
-- keys per job (after the three fixed ones)
local kper = 1
if per == 6 then
  kper = 2
end
-- Refuse a call that could not be written whole before writing any of it.
if per == 6 and (tonumber(idem_ttl) or 0) < 1 then
  for i = 4, #ARGV, per do
    if ARGV[i + 4] ~= '' then
      return redis.error_reply('ERR idempotency TTL must be at least 1 ms, got ' .. idem_ttl)
    end
  end
end
local j = 0
for i = 4, #ARGV, per do
  local kj = 3 + j * kper
  j = j + 1
  local id = ARGV[i]
  local batch, idem, run_at_s = '', '', '0'
  if per == 6 then
    batch, idem, run_at_s = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  end
  local jk = KEYS[kj + 1]
  local result_id, skip = claim_new(KEYS[kj + 2], jk, id, idem, idem_ttl)
  if not skip then
    if batch == '' then
      redis.call('HSET', jk, 'spec', ARGV[i + 1], 'status', 'queued',
        'meta', stamp_meta(ARGV[i + 2], now, now_s))
    else
      redis.call('HSET', jk, 'spec', ARGV[i + 1], 'status', 'queued',
        'meta', stamp_meta(ARGV[i + 2], now, now_s), 'batch', batch)
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
