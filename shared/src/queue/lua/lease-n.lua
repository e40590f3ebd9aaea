-- lease: the last step of a fetch. It leases the jobs `claim` (the first step) took
-- off `wait` for this fetch, as its fetch record lists them: each `queued` job becomes
-- `running` under the fetch's fencing token.
--
-- Every key this script touches is in KEYS: the caller names, per claimed job, its
-- record and batch record (and, for a job cancelled while queued, its attempts, its
-- cache entry and the jobs waiting on it), from what it read after the claim. Each
-- job is checked again here: every key leasing it (or ending it) could touch must have
-- been declared; a job whose keys were not all declared stays claimed for the next
-- call of this fetch (ARGV[6] = 'more'), or goes back to the front of `wait`, claimed by
-- nobody, when this is the fetch's last call. The caller sends its first call with the
-- records only, together with its read (one round trip for a job in no batch and not
-- cancelled), and a second with what the read named, only if the first left a job
-- claimed. While the fetch record lives, its claims have not expired (both were
-- written with one TTL by one call), so reclaim has not taken them back; a lease still
-- re-adds the job to `active` (not `XX`), so that a job is never `running` without a
-- lease.
--
-- KEYS[1] wait     LIST  ready job IDs
-- KEYS[2] active   ZSET  job ID -> lease expiry (ms)
-- KEYS[3] marker   ZSET  wakes a blocked worker
-- KEYS[4] token    STRING fencing-token counter
-- KEYS[5] dead     ZSET  dead-lettered job ID -> time (ms)
-- KEYS[6] fetch    STRING `fetch:<worker>:<fetch ID>`: JSON [token, leased IDs, claimed
--                  IDs not leased yet] (claim-5.lua writes ['', [], IDs])
-- then any number of job, attempts, batch, cache and follower job keys, in any order,
-- then the index tail (_index.lua)
--
-- ARGV[1] prefix, ARGV[2] lease TTL (ms), ARGV[3] worker name, ARGV[4] result TTL
-- (ms), ARGV[5] fetch ID (chosen by the worker, kept across retries of one fetch; a UUID),
-- ARGV[6] 'more' when another call of this fetch follows, else 'last'
--
-- Idempotent: the leases a call hands out move from the claimed IDs to the leased ones
-- in the fetch record (one SET per call, expiring after a lease TTL), all under the
-- fetch's one token (drawn by its first call that leases). A call returns every lease
-- of the fetch, re-read, as far as it still runs under that token: the same call again
-- (its reply was lost to a cut connection or a timeout) leases nothing twice. A fetch
-- record that is gone (a stall past the lease TTL) leases nothing: reclaim returns what
-- it claimed.
--
-- Cancelled jobs are dropped here: `cancel` leaves a queued job's ID in `wait` (no scan
-- of the list), and its record's TTL starts when the ID comes out. A queued job that
-- carries a cancel flag ends `cancelled` instead of running.
--
-- Returns a flat array { head, meta_1, spec_1, meta_2, spec_2, ... }: head is
-- "<now><TAB><claimed>", Redis' time of this call and how many jobs stay claimed for the
-- next call (the caller makes it the clock line "<now><TAB><next_due>" of claim-5.lua,
-- with the claim's earliest delayed job); per lease,
-- meta is "token<TAB>attempt<TAB>max_attempts<TAB>deadline_at<TAB>
-- created_at<TAB>id" (the job's `meta` field as enqueue wrote it, in the middle; the ID
-- last, so it may hold anything) and spec the job's JSON.
-- Two bulk strings per job instead of a nested array of seven: building and parsing the
-- reply was the worker's largest cost (BENCHMARKS.md).
-- The fencing token is one per fetch, shared by the jobs its calls lease: a token still
-- names one attempt of one job. It is "<counter>.<nonce>": the counter (INCR) grows with
-- every fetch, and the nonce (the fetch ID's last 12 hex digits, random) tells apart two
-- fetches that drew the same counter value -- as after a failover to a replica that had
-- not yet seen the last INCRs -- so a token is never issued twice. Tokens are only ever
-- compared whole, for equality.
-- An ID without a job record is dead-lettered with the reason, never dropped.
-- Per leased job: one HMGET, one HSET, one ZADD, all with string arguments (the hot
-- path; see BENCHMARKS.md).
local prefix = ARGV[1]
local now, now_s = redis_now()
local lease_until = string.format('%d', now + tonumber(ARGV[2]))
local worker = ARGV[3]
local result_ttl = tonumber(ARGV[4])
local last = ARGV[6] ~= 'more'
local pj = prefix .. 'job:'
local fk = KEYS[6]
local out = { now_s .. '\t0' }
local declared = {}
for i = 7, IXT do
  declared[KEYS[i]] = true
end

local claim = redis.call('GET', fk)
if not claim then
  return out
end
local rec = cjson.decode(claim)
local token, leased, claimed = rec[1], rec[2], rec[3]

-- What earlier calls of this fetch leased (a retried call), re-read.
for _, id in ipairs(leased) do
  local jk = pj .. id
  if declared[jk] then
    local f = redis.call('HMGET', jk, 'status', 'token', 'attempts', 'spec', 'meta')
    if f[1] == 'running' and f[2] == token then
      out[#out + 1] = token .. '\t' .. f[3] .. '\t' .. job_meta(jk, f[5]) .. '\t' .. id
      out[#out + 1] = f[4] or ''
    end
  end
end
if #claimed == 0 then
  return out
end

-- Whether the keys ending a cancelled job `id` may touch were declared: its attempts,
-- and its cache entry with the jobs waiting on it.
local function end_declared(id, cache)
  if not declared[prefix .. 'attempts:' .. id] then
    return false
  end
  return cache_keys_declared(prefix, cache, declared)
end

local deltas = {}
if token == '' then
  token = redis.call('INCR', KEYS[4]) .. '.' .. string.sub(ARGV[5], -12)
end
local left = {}
for _, id in ipairs(claimed) do
  local jk = pj .. id
  if not declared[jk] then
    left[#left + 1] = id
  else
    local f = redis.call('HMGET', jk, 'status', 'batch', 'attempts', 'spec', 'meta', 'cancel',
      'cache', 'in_wait')
    local status, batch = f[1], f[2]
    if not status then
      redis.call('ZREM', KEYS[2], id)
      redis.call('HSET', jk, 'id', id, 'status', 'dead', 'attempts', 0, 'finished_at', now,
        'error', cjson.encode({ class = 'permanent',
          message = 'undecodable job: no job record for this ID' }))
      redis.call('ZADD', KEYS[5], now, id)
      ix_move(id, nil, 'dead')
      hist_add('dead', 1)
      redis.call('PUBLISH', prefix .. 'done', id)
    elseif batch and batch ~= '' and not declared[prefix .. 'batch:' .. batch] then
      left[#left + 1] = id
    elseif status == 'queued' and f[6] == '1' then
      if end_declared(id, f[7]) then
        redis.call('ZREM', KEYS[2], id)
        count_move(deltas, batch, status, 'cancelled')
        ix_move(id, status, 'cancelled')
        redis.call('HSET', jk, 'status', 'cancelled', 'error', CANCELLED_ERROR)
        redis.call('HDEL', jk, 'cancel')
        finish(prefix, jk, id, now, result_ttl)
        cache_hand_over(prefix, jk, id, KEYS[1], KEYS[3])
      else
        left[#left + 1] = id
      end
    elseif status == 'queued' then
      local attempt = succ(f[3] or '0')
      if batch then
        count_move(deltas, batch, status, 'running')
      end
      redis.call('HSET', jk, 'status', 'running', 'attempts', attempt, 'token', token,
        'worker', worker, 'started_at', now_s)
      -- GT: never undo what reclaim added to the claim's expiry for a stall
      redis.call('ZADD', KEYS[2], 'GT', lease_until, id)
      ix_move(id, 'queued', 'running')
      out[#out + 1] = token .. '\t' .. attempt .. '\t' .. job_meta(jk, f[5]) .. '\t' .. id
      out[#out + 1] = f[4] or ''
      leased[#leased + 1] = id
    elseif status == 'running' then
      -- already leased by another fetch (its ID was in `wait` twice): not ours
    elseif f[8] == '1' and not declared[prefix .. 'attempts:' .. id] then
      left[#left + 1] = id
    else
      redis.call('ZREM', KEYS[2], id)
      if f[8] == '1' then
        -- cancelled while queued: its entry is gone now, so its record may expire
        redis.call('HDEL', jk, 'in_wait')
        expire_ended(prefix, jk, id, result_ttl)
      end
      -- any other status is a stale list entry: skip it
    end
  end
end
if last and #left > 0 then
  -- Back to the front of `wait` in the order they were popped; the next fetch reads
  -- their keys afresh.
  for i = #left, 1, -1 do
    redis.call('ZREM', KEYS[2], left[i])
    redis.call('RPUSH', KEYS[1], left[i])
  end
  redis.call('ZADD', KEYS[3], '0', '0')
  left = {}
end
redis.call('SET', fk, cjson.encode({ token, leased, left }), 'PX', ARGV[2])
write_counts(prefix, deltas, nil, false)
ix_flush(now, now_s)
out[1] = now_s .. '\t' .. #left
return out
