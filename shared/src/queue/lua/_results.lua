-- Helpers for large results and the result cache, prepended after _lib.lua to every
-- queue script (scripts.rs). See shared/src/results/ for the Rust side.
--
-- Keys (all under the queue's prefix, so in its hash slot):
--   answer:<id>          HASH  a large answer in chunks, fields '0', '1', ...
--   staged:<id>:<token>  HASH  the same, written by an attempt before it completes
--   cache:<digest>       HASH  job = the job that answers this query, state = running |
--                              done, and one field f:<id> per job waiting for it
-- A job hash that takes part in the cache has `cache` (its entry's key) and
-- `cache_ttl` (ms); a job waiting for another has `follows` (that job's ID).

local function answer_key(prefix, id)
  return prefix .. 'answer:' .. id
end

-- Serve job `id` (hash `jk`, status already counted by the caller) the result of job
-- `from`: its result JSON with `cached` and `cached_from` in front, and a copy of its
-- stored answer. The result JSON is an object, so splicing after its `{` keeps it
-- valid without decoding it (a decode/encode would turn [] into {}).
local function serve_cached(prefix, jk, id, from, result_json, now_s, ttl)
  local cached = '{"cached":true,"cached_from":' .. cjson.encode(from) .. ',' ..
    string.sub(result_json, 2)
  redis.call('HSET', jk, 'status', 'succeeded', 'result', cached, 'finished_at', now_s)
  redis.call('HDEL', jk, 'follows')
  local src = answer_key(prefix, from)
  local dst = answer_key(prefix, id)
  if redis.call('EXISTS', src) == 1 then
    redis.call('COPY', src, dst, 'REPLACE')
    if ttl > 0 then
      redis.call('PEXPIRE', dst, ttl)
    end
  end
  if ttl > 0 then
    redis.call('PEXPIRE', jk, ttl)
  end
end

-- The IDs waiting on a cache entry (fields f:<id>), from HGETALL's reply.
local function cache_followers(entry)
  local out = {}
  for i = 1, #entry, 2 do
    if string.sub(entry[i], 1, 2) == 'f:' then
      out[#out + 1] = string.sub(entry[i], 3)
    end
  end
  return out
end

-- Job `id` succeeded with `result_json`: its cache entry `ck` becomes `done` for
-- `cache_ttl` ms (never past the result TTL: the entry points at this job's record),
-- and every job waiting on it gets the result now. Counted in `deltas`.
-- An entry that names another job (this one ran outside it: a dead job retried after
-- its followers moved on) is left alone.
local function cache_settle_success(prefix, ck, id, result_json, now_s, cache_ttl, ttl, deltas)
  local entry = redis.call('HGETALL', ck)
  local owner = nil
  for i = 1, #entry, 2 do
    if entry[i] == 'job' then
      owner = entry[i + 1]
    end
  end
  if owner and owner ~= id then
    return
  end
  local followers = cache_followers(entry)
  redis.call('DEL', ck)
  redis.call('HSET', ck, 'job', id, 'state', 'done')
  local keep = cache_ttl
  if ttl > 0 and ttl < keep then
    keep = ttl
  end
  redis.call('PEXPIRE', ck, keep)
  for _, fid in ipairs(followers) do
    local fjk = prefix .. 'job:' .. fid
    local f = redis.call('HMGET', fjk, 'status', 'batch', 'ix')
    if f[1] == 'queued' then
      count_move(deltas, f[2], 'queued', 'succeeded')
      serve_cached(prefix, fjk, fid, id, result_json, now_s, ttl)
      ix_move(fid, 'queued', 'succeeded')
      ix_ended(fid, f[3], ttl)
      hist_add('succeeded', 1)
    end
  end
end

-- Job `id` (hash `jk`) ended without a result (dead, cancelled, failed). A failure is
-- never cached: if it led a cache entry, the first job waiting on it takes over and
-- is made ready (RPUSH: it runs next), the others keep waiting on that one; with
-- nobody waiting the entry goes. `marker_key` (may be nil) wakes a blocked worker.
local function cache_hand_over(prefix, jk, id, wait_key, marker_key)
  local ck = redis.call('HGET', jk, 'cache')
  if not ck then
    return
  end
  local entry = redis.call('HGETALL', ck)
  local owner, state = nil, nil
  for i = 1, #entry, 2 do
    if entry[i] == 'job' then
      owner = entry[i + 1]
    elseif entry[i] == 'state' then
      state = entry[i + 1]
    end
  end
  if owner ~= id or state ~= 'running' then
    return
  end
  for _, fid in ipairs(cache_followers(entry)) do
    redis.call('HDEL', ck, 'f:' .. fid)
    local fjk = prefix .. 'job:' .. fid
    if redis.call('HGET', fjk, 'status') == 'queued' then
      redis.call('HSET', ck, 'job', fid)
      redis.call('HDEL', fjk, 'follows')
      redis.call('RPUSH', wait_key, fid)
      if marker_key then
        redis.call('ZADD', marker_key, '0', '0')
      end
      return
    end
  end
  redis.call('DEL', ck)
end

-- A queued job that waited on another leaves its cache entry (it was cancelled).
-- Returns true when it was waiting (it is in no ready list).
local function cache_unfollow(prefix, jk, id)
  local f = redis.call('HMGET', jk, 'follows', 'cache')
  if not f[1] then
    return false
  end
  if f[2] then
    redis.call('HDEL', f[2], 'f:' .. id)
  end
  redis.call('HDEL', jk, 'follows')
  return true
end
