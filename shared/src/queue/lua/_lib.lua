-- Shared helpers, prepended to every script at load time (scripts.rs).
-- Every key a script touches starts with the queue's prefix "<key_prefix>:{<queue>}:",
-- so all of them hash to one Redis Cluster slot.

local function job_key(prefix, id)
  return prefix .. 'job:' .. id
end

-- Move a job to a new status, keeping its batch record's per-status counters true.
local function set_status(prefix, jk, new_status)
  local f = redis.call('HMGET', jk, 'status', 'batch')
  local old, batch = f[1], f[2]
  redis.call('HSET', jk, 'status', new_status)
  if batch and batch ~= '' then
    local bk = prefix .. 'batch:' .. batch
    if old then
      redis.call('HINCRBY', bk, old, -1)
    end
    redis.call('HINCRBY', bk, new_status, 1)
  end
end

-- Batch counters, accumulated over one script call and written once per batch and
-- status at the end (the hot scripts move many jobs of one batch per call).
local function count_move(deltas, batch, old, new)
  if not batch or batch == '' then
    return
  end
  local d = deltas[batch]
  if not d then
    d = {}
    deltas[batch] = d
  end
  if old then
    d[old] = (d[old] or 0) - 1
  end
  d[new] = (d[new] or 0) + 1
end

local function write_counts(prefix, deltas, ttl_ms)
  for batch, d in pairs(deltas) do
    local bk = prefix .. 'batch:' .. batch
    for status, n in pairs(d) do
      if n ~= 0 then
        redis.call('HINCRBY', bk, status, n)
      end
    end
    if ttl_ms and ttl_ms > 0 then
      redis.call('PEXPIRE', bk, ttl_ms)
    end
  end
end

-- A job reached an end state: stamp it, let its record (and attempts, and batch
-- record) expire after the result TTL, and tell waiters.
local function finish(prefix, jk, id, now, ttl_ms)
  redis.call('HSET', jk, 'finished_at', now)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', jk, ttl_ms)
    redis.call('PEXPIRE', prefix .. 'attempts:' .. id, ttl_ms)
    local batch = redis.call('HGET', jk, 'batch')
    if batch and batch ~= '' then
      redis.call('PEXPIRE', prefix .. 'batch:' .. batch, ttl_ms)
    end
  end
  redis.call('PUBLISH', prefix .. 'done', id)
end

-- The attempt holding `token` may change this job only while it runs.
-- Returns 'ok', 'settled' (this token already settled it: a retried call), or 'stale'.
local function check_fence(jk, token)
  local f = redis.call('HMGET', jk, 'token', 'status', 'settled')
  if f[1] ~= token then
    return 'stale'
  end
  if f[2] ~= 'running' then
    if f[3] == token then
      return 'settled'
    end
    return 'stale'
  end
  return 'ok'
end

-- The job IDs a dead-letter command acts on: ARGV[first..] when given, else up to
-- `max` of the oldest in the dead set.
local function dead_ids(dead_key, first, max)
  if #ARGV >= first then
    local ids = {}
    for i = first, #ARGV do
      ids[#ids + 1] = ARGV[i]
    end
    return ids
  end
  return redis.call('ZRANGE', dead_key, 0, max - 1)
end
