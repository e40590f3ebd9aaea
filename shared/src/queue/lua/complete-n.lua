-- complete: write the results of successful attempts and end their jobs `succeeded`.
-- Only the attempt holding the current fencing token may do this, so a stale attempt
-- (its lease was reclaimed) can never overwrite a result: exactly-once result.
-- Several completions travel in one call when they arrive together (the worker
-- batches them while a call is in flight), which saves a round trip per job.
--
-- KEYS[1] active  ZSET job ID -> lease expiry (ms)
-- then per completion: its record `job:<id>` and attempts `attempts:<id>`, and with 5
--   arguments per completion also its answer `answer:<id>` and staged answer
--   `staged:<id>:<token>` (declared whether or not that completion staged one);
-- then any number of further keys, in any order: the batch records of the jobs, and
--   for a job that leads a result cache entry, the entry, the job's answer, and the
--   record, answer and batch record of each job waiting on the entry (the caller reads
--   them first: docs/ARCHITECTURE.md, "Keys and Redis Cluster");
-- then the index tail (_index.lua).
-- A completion whose keys were not all declared (its cache entry gained a follower
-- since the caller read it) changes nothing and gets code 4: the caller reads again
-- and sends it again.
--
-- ARGV[1] prefix, ARGV[2] result TTL (ms), ARGV[3] arguments per
-- completion (4, or 5 when some completion of the call staged its answer),
-- then per completion: job ID, token, result JSON (which also describes the successful
-- attempt: worker, times, agent; `fleet status` derives its history entry from it),
-- the job's cost in micro-USD (all its attempts; '0' when unknown: the history's
-- `cost`), and with 5: '1' when the attempt staged its answer under `staged:<id>:<token>`.
--
-- A staged answer becomes the job's `answer:<id>` (RENAME) in the same step that makes
-- the job `succeeded`: no reader sees the status without its answer. A job that leads a
-- result cache entry (`cache` field) fills it, and the jobs waiting on it get the result
-- (_results.lua).
--
-- Returns one code per completion: 1 done, 2 already done by this token (a retried
-- call), 0 refused (stale), 3 refused: its staged answer is gone (expired), 4 not done:
-- a key it would touch was not declared (read again and retry).
--
-- An `error` or `cancel` field left by earlier attempts stays in the hash: readers ignore
-- both on a succeeded job (results.rs), which saves reading and deleting them here.
local prefix = ARGV[1]
local now, now_s = redis_now()
local ttl_s = ARGV[2]
local ttl = tonumber(ttl_s)
local out = {}
local deltas = {}
local any = nil
local per = tonumber(ARGV[3])
local kper = 2
if per == 5 then
  kper = 4
end
local pj = prefix .. 'job:'
local pb = prefix .. 'batch:'
-- The declared keys, looked up by name; built on first use (a completion of a job in
-- no batch and not in the cache needs none).
local declared_set = nil
local function declared(k)
  if not declared_set then
    declared_set = declared_keys(2)
  end
  return declared_set[k]
end

local function batch_declared(batch)
  return not batch or batch == '' or declared(pb .. batch)
end

-- Whether settling cache entry `ck` for job `id` may touch only declared keys: the
-- entry, the job's answer (copied to the followers), and each follower's record,
-- answer and batch record. An entry that names another job is not touched.
local function cache_declared(ck, id)
  if not declared(ck) then
    return false
  end
  local entry = redis.call('HGETALL', ck)
  for i = 1, #entry, 2 do
    if entry[i] == 'job' and entry[i + 1] ~= id then
      return true
    end
  end
  if not declared(answer_key(prefix, id)) then
    return false
  end
  for _, fid in ipairs(cache_followers(entry)) do
    if not (declared(pj .. fid) and declared(answer_key(prefix, fid))) then
      return false
    end
    if not batch_declared(redis.call('HGET', pj .. fid, 'batch')) then
      return false
    end
  end
  return true
end

local j = 0
for i = 4, #ARGV, per do
  local kj = 1 + j * kper
  j = j + 1
  local id = ARGV[i]
  local token = ARGV[i + 1]
  local jk = KEYS[kj + 1]
  local f = redis.call('HMGET', jk, 'token', 'status', 'batch', 'attempts', 'first_started_at',
    'cache', 'cache_ttl', 'ix')
  local staged = nil
  if per == 5 and ARGV[i + 4] == '1' then
    staged = KEYS[kj + 4]
  end
  if f[1] ~= token then
    out[#out + 1] = 0
  elseif f[2] ~= 'running' then
    -- settled already by this token (see check_fence in _lib.lua)
    out[#out + 1] = 2
  elseif staged and redis.call('EXISTS', staged) == 0 then
    out[#out + 1] = 3
  elseif not batch_declared(f[3]) or (f[6] and not cache_declared(f[6], id)) then
    out[#out + 1] = 4
  else
    redis.call('ZREM', KEYS[1], id)
    if f[3] then
      count_move(deltas, f[3], 'running', 'succeeded')
    end
    -- The attempts list holds only earlier attempts, so a first-attempt success
    -- creates no second key. One that ran before (`first_started_at`: a dead letter
    -- retried, whose counter started again) has one, which must expire too.
    redis.call('HSET', jk, 'status', 'succeeded', 'result', ARGV[i + 2], 'finished_at', now_s)
    ix_move(id, 'running', 'succeeded')
    ix_ended(id, f[8], ttl)
    hist_add('succeeded', 1)
    hist_add('cost', tonumber(ARGV[i + 3]) or 0)
    if staged then
      redis.call('RENAME', staged, KEYS[kj + 3])
      if ttl > 0 then
        redis.call('PEXPIRE', KEYS[kj + 3], ttl_s)
      else
        redis.call('PERSIST', KEYS[kj + 3])
      end
    end
    if ttl > 0 then
      redis.call('PEXPIRE', jk, ttl_s)
      if f[4] ~= '1' or f[5] then
        redis.call('PEXPIRE', KEYS[kj + 2], ttl_s)
      end
    end
    if f[6] then
      cache_settle_success(prefix, f[6], id, ARGV[i + 2], now_s, tonumber(f[7]) or 0, ttl,
        deltas)
    end
    any = id
    out[#out + 1] = 1
  end
end
write_counts(prefix, deltas, ttl, false)
ix_flush(now, now_s)
if any then
  -- Waiters re-read their job on any message, so one per call is enough.
  redis.call('PUBLISH', prefix .. 'done', any)
end
return out
