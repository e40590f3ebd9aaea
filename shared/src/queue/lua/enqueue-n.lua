-- enqueue: write one or more jobs and make them ready (or delayed), atomically.
--
-- KEYS[1] wait     LIST  ready job IDs (LPUSH here, RPOP at fetch: FIFO)
-- KEYS[2] delayed  ZSET  job ID -> run_at (ms)
-- KEYS[3] marker   ZSET  one member; its presence wakes a worker blocked in BZPOPMIN
-- then per job: its record `job:<id>`, and with 6 arguments per job also its
--   idempotency key `idem:<key>` (`idem:` alone when it has none: declared, unused);
-- then the record `batch:<id>` of each batch the jobs belong to, once each;
-- then the membership indexes `ix:agent:<name>` / `ix:batch:<id>` the jobs join, once
-- each (ARGV[4] of them); then the index tail (_index.lua).
--
-- ARGV[1] prefix, ARGV[2] idempotency TTL (ms), ARGV[3] arguments per job (4 or 7),
-- ARGV[4] how many membership index keys, then per job: id, spec JSON, meta, ix (its
--   membership indexes, tab-separated suffixes of `ix:`; stored as the `ix` field),
--   and with 7 also: batch ID ('' = none), idempotency key ('' = none), run_at (ms by
--   Redis' clock, 0 = now).
-- (4 when no job of the call has any of the last three: fewer arguments to convert.)
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
if per == 7 then
  kper = 2
end
-- the membership indexes, by their suffix after `ix:`
local member_ix = {}
for k = IXT - tonumber(ARGV[4]) + 1, IXT do
  member_ix[string.sub(KEYS[k], #prefix + 4)] = KEYS[k]
end
-- Each distinct `ix` value of the call, split once into the lists of IDs its jobs join
-- (the jobs of a call mostly share one or two): no per-job string splitting.
local ix_lists = {}
-- Refuse a call that could not be written whole before writing any of it.
for i = 5, #ARGV, per do
  local ix = ARGV[i + 3]
  if not ix_lists[ix] then
    local lists = {}
    for suffix in string.gmatch(ix, '[^\t]+') do
      local key = member_ix[suffix]
      if not key then
        return redis.error_reply('ERR membership index ix:' .. suffix .. ' not declared')
      end
      lists[#lists + 1] = ix_list(ix_add, key)
    end
    ix_lists[ix] = lists
  end
end
if per == 7 and (tonumber(idem_ttl) or 0) < 1 then
  for i = 5, #ARGV, per do
    if ARGV[i + 5] ~= '' then
      return redis.error_reply('ERR idempotency TTL must be at least 1 ms, got ' .. idem_ttl)
    end
  end
end
local j = 0
local enqueued = 0
-- the IDs made ready now, pushed at the end in one LPUSH per chunk (in call order, as
-- one LPUSH each would), and the status index they join
local ready = {}
local queued_ix = {}
if IX.queued then
  ix_add[IX.queued] = queued_ix
end
for i = 5, #ARGV, per do
  local kj = 3 + j * kper
  j = j + 1
  local id = ARGV[i]
  local ix = ARGV[i + 3]
  local batch, idem, run_at_s = '', '', '0'
  if per == 7 then
    batch, idem, run_at_s = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  end
  local jk = KEYS[kj + 1]
  local result_id, skip = claim_new(KEYS[kj + 2], jk, id, idem, idem_ttl)
  if not skip then
    if batch == '' and ix == '' then
      -- no index to join (`queue.listing_indexes = false`): no `ix` field
      redis.call('HSET', jk, 'spec', ARGV[i + 1], 'status', 'queued',
        'meta', stamp_meta(ARGV[i + 2], now, now_s))
    elseif batch == '' then
      redis.call('HSET', jk, 'spec', ARGV[i + 1], 'status', 'queued',
        'meta', stamp_meta(ARGV[i + 2], now, now_s), 'ix', ix)
    else
      redis.call('HSET', jk, 'spec', ARGV[i + 1], 'status', 'queued',
        'meta', stamp_meta(ARGV[i + 2], now, now_s), 'ix', ix, 'batch', batch)
      count_move(deltas, batch, nil, 'total')
      count_move(deltas, batch, nil, 'queued')
    end
    queued_ix[#queued_ix + 1] = id
    local lists = ix_lists[ix]
    for n = 1, #lists do
      local l = lists[n]
      l[#l + 1] = id
    end
    enqueued = enqueued + 1
    if run_at_s ~= '0' and tonumber(run_at_s) > now then
      redis.call('HSET', jk, 'run_at', run_at_s)
      redis.call('ZADD', KEYS[2], run_at_s, id)
    else
      ready[#ready + 1] = id
    end
    woke = true
  end
  out[#out + 1] = result_id
end
for i = 1, #ready, IX_CHUNK do
  redis.call('LPUSH', KEYS[1], unpack(ready, i, math.min(i + IX_CHUNK - 1, #ready)))
end
write_counts(prefix, deltas, nil, true)
hist_add('enqueued', enqueued)
ix_flush(now, now_s)
if woke then
  redis.call('ZADD', KEYS[3], '0', '0')
end
return out
