-- Shared helpers, prepended to every script at load time (scripts.rs).
-- Every key a script touches starts with the queue's prefix "<key_prefix>:{<queue>}:",
-- so all of them hash to one Redis Cluster slot.
--
-- Keys. Every key a script touches is passed in KEYS (each script's header lists
-- them), with no exception (docs/ARCHITECTURE.md, "Keys and Redis Cluster"). The keys
-- a script would otherwise find by reading -- the records of jobs popped from `wait`
-- or `delayed`, a job's batch record (its `batch` field), a result cache entry and
-- the jobs waiting on it -- are read by the caller first and declared; the script
-- checks they were declared before touching them (names are built here from the
-- prefix only to look them up among KEYS), and what changed in between is left for
-- another pass or refused with a code that makes the caller read again.
--
-- Time. Every timestamp a script writes or compares is Redis' clock (`TIME`), never a
-- caller's: workers whose clocks disagree still agree on leases, delays and deadlines.

-- Enqueue: may a new job `id` be written at `jk`? Not when its idempotency key `ik`
-- (used only when `idem` is set) already names a job — that one is the answer — nor when
-- the record exists. Otherwise `ik` now names `id`. Returns the job ID to answer with and
-- whether to skip writing.
local function claim_new(ik, jk, id, idem, idem_ttl)
  if idem ~= '' then
    local existing = redis.call('GET', ik)
    if existing then
      return existing, true
    end
    redis.call('SET', ik, id, 'PX', idem_ttl)
  end
  return id, redis.call('EXISTS', jk) == 1
end

local function job_key(prefix, id)
  return prefix .. 'job:' .. id
end

-- The set of KEYS[first..] before the index tail, to look names up in.
local function declared_keys(first)
  local declared = {}
  for i = first, IXT do
    declared[KEYS[i]] = true
  end
  return declared
end

-- Whether result cache entry `cache` (nil: none) and the records of the jobs waiting on
-- it (its `f:<id>` fields) are all in `declared`.
local function cache_keys_declared(prefix, cache, declared)
  if not cache then
    return true
  end
  if not declared[cache] then
    return false
  end
  for _, field in ipairs(redis.call('HKEYS', cache)) do
    if string.sub(field, 1, 2) == 'f:' and not declared[prefix .. 'job:' .. string.sub(field, 3)] then
      return false
    end
  end
  return true
end

-- Whether ending or requeuing the job whose record is `jk` may touch only keys in
-- `declared` (declared_keys): its batch record, and its result cache entry with the
-- records of the jobs waiting on it.
local function job_keys_declared(prefix, jk, declared)
  local f = redis.call('HMGET', jk, 'batch', 'cache')
  if f[1] and f[1] ~= '' and not declared[prefix .. 'batch:' .. f[1]] then
    return false
  end
  return cache_keys_declared(prefix, f[2], declared)
end

-- Redis' clock in ms, as a number and as a decimal string (no "%.17g" formatting).
local function redis_now()
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return ms, string.format('%d', ms)
end

-- A job's meta as stored, "max_attempts<TAB>deadline_at<TAB>created_at", from the
-- caller's "max_attempts<TAB>deadline ms from now (0 = none)", stamped with Redis'
-- clock `now` (`now_s` its string).
local function stamp_meta(m, now, now_s)
  local max, rel = string.match(m, '^([^\t]*)\t(%d+)$')
  if not max then
    return m
  end
  if rel == '0' then
    return max .. '\t0\t' .. now_s
  end
  return max .. '\t' .. string.format('%d', now + tonumber(rel)) .. '\t' .. now_s
end

-- Hot paths pass only strings to redis.call: a Lua number argument is formatted with
-- printf("%.17g") on every call, which measured as costly as the command itself.
-- `succ` steps a counter kept as a decimal string without that formatting in the
-- common case.
local SUCC = { ['0'] = '1', ['1'] = '2', ['2'] = '3', ['3'] = '4', ['4'] = '5',
  ['5'] = '6', ['6'] = '7', ['7'] = '8', ['8'] = '9', ['9'] = '10' }
local function succ(s)
  return SUCC[s] or tostring((tonumber(s) or 0) + 1)
end

-- Move a job to a new status, keeping its batch record's per-status counters and the
-- status indexes (_index.lua; `jk` is `<prefix>job:<id>`) true.
-- A batch record that has expired is not brought back as bare counters (with no TTL).
local function set_status(prefix, jk, new_status)
  local f = redis.call('HMGET', jk, 'status', 'batch')
  local old, batch = f[1], f[2]
  redis.call('HSET', jk, 'status', new_status)
  ix_move(string.sub(jk, #prefix + 5), old, new_status)
  if batch and batch ~= '' and redis.call('EXISTS', prefix .. 'batch:' .. batch) == 1 then
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

-- `create`: only enqueue creates a batch record; other scripts update one that still
-- exists (one EXISTS per batch and call), so an expired record is not brought back as
-- bare counters with no TTL.
local function write_counts(prefix, deltas, ttl_ms, create)
  for batch, d in pairs(deltas) do
    local bk = prefix .. 'batch:' .. batch
    if create or redis.call('EXISTS', bk) == 1 then
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
end

-- Let an ended job's record, attempts and batch record expire after the result TTL.
local function expire_ended(prefix, jk, id, ttl_ms)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', jk, ttl_ms)
    redis.call('PEXPIRE', prefix .. 'attempts:' .. id, ttl_ms)
    local batch = redis.call('HGET', jk, 'batch')
    if batch and batch ~= '' then
      redis.call('PEXPIRE', prefix .. 'batch:' .. batch, ttl_ms)
    end
  end
end

-- A job reached an end state: stamp it, let its record (and attempts, and batch
-- record) expire after the result TTL, and tell waiters.
local function finish(prefix, jk, id, now, ttl_ms)
  redis.call('HSET', jk, 'finished_at', now)
  expire_ended(prefix, jk, id, ttl_ms)
  ix_ended(id, redis.call('HGET', jk, 'ix'), ttl_ms)
  redis.call('PUBLISH', prefix .. 'done', id)
end

local CANCELLED_ERROR = cjson.encode({ class = 'cancelled',
  message = 'cancelled before it ran to the end' })

-- A job ran out of chances: `dead`, in the dead-letter set (kept until retried or
-- purged, so no result TTL), and waiters told.
local function bury(prefix, jk, id, now, dead_key)
  set_status(prefix, jk, 'dead')
  hist_add('dead', 1)
  redis.call('HSET', jk, 'finished_at', now)
  redis.call('ZADD', dead_key, now, id)
  redis.call('PUBLISH', prefix .. 'done', id)
end

-- The attempt holding `token` may change this job only while it runs.
-- Returns 'ok', 'settled' (this token already settled it: a retried call), or 'stale'.
-- The `token` field names the attempt that last held the job: it stays when that
-- attempt settles (so a retried call is recognised) and is removed when its lease is
-- reclaimed (so the stale holder's calls are refused); the next fetch replaces it.
local function check_fence(jk, token)
  local f = redis.call('HMGET', jk, 'token', 'status')
  if f[1] ~= token then
    return 'stale'
  end
  if f[2] ~= 'running' then
    return 'settled'
  end
  return 'ok'
end

-- A job's meta ("max_attempts<TAB>deadline_at<TAB>created_at", see enqueue-n.lua), also
-- for a record written before meta existed (separate fields) or by hand.
local function job_meta(jk, meta)
  if meta then
    return meta
  end
  local o = redis.call('HMGET', jk, 'max_attempts', 'deadline_at', 'created_at')
  return (o[1] or '1') .. '\t' .. (o[2] or '0') .. '\t' .. (o[3] or '0')
end

-- `first_started_at` is written when an attempt ends without success, from that
-- attempt's `started_at`; until then `started_at` is the first start (readers use
-- first_started_at, else started_at). Keeps the field out of the hot fetch path.
local function keep_first_start(jk, started_at)
  if started_at then
    redis.call('HSETNX', jk, 'first_started_at', started_at)
  end
end

-- The job IDs a dead-letter command acts on: ARGV[first..] (the caller names them,
-- the oldest of the dead set when the user named none, so their keys are declared).
local function dead_ids(first)
  local ids = {}
  for i = first, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
  return ids
end
