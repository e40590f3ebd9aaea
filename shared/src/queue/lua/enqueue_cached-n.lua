-- enqueue_cached: write jobs that use the result cache, looking each one's query up in
-- the cache in the same atomic step (so two identical jobs never both run):
--   done entry     -> the job is written `succeeded` at once with that job's result
--                     (`cached: true`, `cached_from`) and a copy of its stored answer;
--                     no agent runs
--   running entry  -> the job waits on the job that runs the query (`follows`; in no
--                     ready list) and gets its result when it succeeds (complete-n.lua)
--   none           -> the job claims the entry and is made ready like any job
-- An entry whose job is gone or ended without a result is taken over (jobs already
-- waiting on it stay and wait on the new one).
--
-- KEYS[1] wait     LIST  ready job IDs
-- KEYS[2] marker   ZSET  wakes a blocked worker
-- KEYS[3..2+n] one cache entry key (HASH, `…:cache:<digest>`) per job, in job order;
--   the same key appears once per job that asks the same query;
-- then 3 per job: its record `job:<id>`, its idempotency key `idem:<key>` (`idem:`
--   alone when it has none: declared, unused), its answer `answer:<id>`;
-- then the record `batch:<id>` of each batch the jobs belong to, once each;
-- then the record `job:<id>` and answer `answer:<id>` of each job the cache entries
--   name (`job` field), as the caller read them just before (docs/ARCHITECTURE.md,
--   "Keys and Redis Cluster");
-- then the membership indexes the jobs join (ARGV[4] of them), then the index tail
-- (_index.lua). Hence `-n`: 2 + 4 per job + batches + named jobs' 2 + indexes + tail.
-- An entry that names a job whose keys were not declared (another enqueue took it over
-- in between) stops the call before it writes anything: it returns no IDs, and the
-- caller reads the entries again and sends the call again.
--
-- ARGV[1] prefix, ARGV[2] result TTL (ms), ARGV[3] idempotency TTL (ms), ARGV[4] how
-- many membership index keys, then 7 per job: id, spec JSON, meta (as enqueue-n.lua
-- takes it), batch ID ('' = none), idempotency key ('' = none), cache TTL (ms, how
-- long a success is served from the cache), ix (as enqueue-n.lua takes it).
--
-- Returns, per job, the ID it exists under (as enqueue-n.lua does); none (an empty
-- array) when an entry names a job not declared.
local prefix = ARGV[1]
local now, now_s = redis_now()
local ttl = tonumber(ARGV[2])
local idem_ttl = ARGV[3]
local n = (#ARGV - 4) / 7
local member_ix = {}
for k = IXT - tonumber(ARGV[4]) + 1, IXT do
  member_ix[string.sub(KEYS[k], #prefix + 4)] = KEYS[k]
end
for i = 5, #ARGV, 7 do
  for suffix in string.gmatch(ARGV[i + 6], '[^\t]+') do
    if not member_ix[suffix] then
      return redis.error_reply('ERR membership index ix:' .. suffix .. ' not declared')
    end
  end
end
local pj = prefix .. 'job:'
local declared = declared_keys(3 + n)
for k = 3, 2 + n do
  local leader = redis.call('HGET', KEYS[k], 'job')
  if leader and not (declared[pj .. leader] and declared[answer_key(prefix, leader)]) then
    return {}
  end
end
local out = {}
local deltas = {}
local woke = false
local served = nil
-- batches with a job ended here: their records expire with it, as any ended job's do
local ended_batches = {}
local j = 0
for i = 5, #ARGV, 7 do
  local kj = 2 + n + j * 3
  j = j + 1
  local id, spec, meta, batch, idem, cache_ttl =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local ix = ARGV[i + 6]
  local ck = KEYS[2 + j]
  local jk = KEYS[kj + 1]
  local result_id, skip = claim_new(KEYS[kj + 2], jk, id, idem, idem_ttl)
  if not skip then
    redis.call('HSET', jk, 'spec', spec, 'meta', stamp_meta(meta, now, now_s), 'cache', ck,
      'cache_ttl', cache_ttl, 'ix', ix)
    for suffix in string.gmatch(ix, '[^\t]+') do
      ix_push(ix_add, member_ix[suffix], id)
    end
    hist_add('enqueued', 1)
    if batch ~= '' then
      redis.call('HSET', jk, 'batch', batch)
      count_move(deltas, batch, nil, 'total')
    end
    local e = redis.call('HMGET', ck, 'state', 'job')
    local hit = false
    if e[1] == 'done' and e[2] then
      local src = redis.call('HMGET', pj .. e[2], 'status', 'result')
      if src[1] == 'succeeded' and src[2] then
        count_move(deltas, batch, nil, 'succeeded')
        serve_cached(prefix, jk, id, e[2], src[2], now_s, ttl)
        ix_move(id, nil, 'succeeded')
        ix_ended(id, ix, ttl)
        hist_add('succeeded', 1)
        if batch ~= '' then
          ended_batches[batch] = true
        end
        served = id
        hit = true
      else
        -- the job it pointed at is gone: a miss
        redis.call('DEL', ck)
        e = { false, false }
      end
    end
    if not hit then
      count_move(deltas, batch, nil, 'queued')
      redis.call('HSET', jk, 'status', 'queued')
      ix_move(id, nil, 'queued')
      local leader = e[2]
      local live = false
      if e[1] == 'running' and leader and leader ~= id then
        local ls = redis.call('HGET', pj .. leader, 'status')
        live = ls == 'queued' or ls == 'running' or ls == 'retrying'
      end
      if live then
        redis.call('HSET', jk, 'follows', leader)
        redis.call('HSET', ck, 'f:' .. id, '1')
      else
        redis.call('HSET', ck, 'state', 'running', 'job', id)
        redis.call('PERSIST', ck)
        redis.call('LPUSH', KEYS[1], id)
        woke = true
      end
    end
  end
  out[#out + 1] = result_id
end
write_counts(prefix, deltas, nil, true)
ix_flush(now, now_s)
if ttl > 0 then
  for batch in pairs(ended_batches) do
    redis.call('PEXPIRE', prefix .. 'batch:' .. batch, ttl)
  end
end
if woke then
  redis.call('ZADD', KEYS[2], '0', '0')
end
if served then
  redis.call('PUBLISH', prefix .. 'done', served)
end
return out
