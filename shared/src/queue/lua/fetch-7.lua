-- fetch: lease up to N ready jobs. Due delayed jobs are promoted by `due_delayed` and
-- `promote_delayed`, which the caller runs when this reply says one is due.
--
-- KEYS[1] wait     LIST  ready job IDs
-- KEYS[2] active   ZSET  job ID -> lease expiry (ms)
-- KEYS[3] delayed  ZSET  job ID -> run_at (ms)
-- KEYS[4] marker   ZSET  wake-up marker for blocked workers
-- KEYS[5] token    STRING fencing-token counter
-- KEYS[6] dead     ZSET  dead-lettered job ID -> time (ms)
-- KEYS[7] fetch    STRING `fetch:<worker>:<fetch ID>`: what this call leased
-- then the index tail (_index.lua)
--
-- The records of the jobs it pops (and their batch records) are found in `wait` by
-- this call: they are not declared (docs/ARCHITECTURE.md, "Keys
-- and Redis Cluster"); their names are built from the prefix, in the queue's slot.
--
-- ARGV[1] prefix, ARGV[2] lease TTL (ms), ARGV[3] max jobs, ARGV[4] worker name,
-- ARGV[5] unused (was the promote chunk, now due_delayed's), ARGV[6] result TTL (ms),
-- ARGV[7] fetch ID (chosen by the worker, kept across retries of one fetch; a UUID)
--
-- Idempotent: the leases a call hands out are noted under KEYS[7] (one SET per call,
-- expiring after a lease TTL). The same call again (its reply was lost to a cut
-- connection or a timeout) leases nothing new and returns those leases, re-read, as far
-- as they still run under that call's token.
--
-- Cancelled jobs are dropped here: `cancel` leaves a queued job's ID in `wait` (no scan
-- of the list), and its record's TTL starts when the ID comes out. A queued job that
-- carries a cancel flag ends `cancelled` instead of running.
--
-- Returns a flat array { clock, meta_1, spec_1, meta_2, spec_2, ... }: clock is
-- "<now><TAB><next_due>", Redis' time of this call and the run_at of the earliest delayed
-- job ('' if none), so an idle worker knows how long to block by Redis' clock; per lease,
-- meta is "token<TAB>attempt<TAB>max_attempts<TAB>deadline_at<TAB>
-- created_at<TAB>id" (the job's `meta` field as enqueue wrote it, in the middle; the ID
-- last, so it may hold anything) and spec the job's JSON.
-- Two bulk strings per job instead of a nested array of seven: building and parsing the
-- reply was the worker's largest cost (BENCHMARKS.md).
-- The fencing token is one per call, shared by the jobs this call leases: a token still
-- names one attempt of one job. It is "<counter>.<nonce>": the counter (INCR) grows with
-- every call, and the nonce (the fetch ID's last 12 hex digits, random) tells apart two
-- calls that drew the same counter value -- as after a failover to a replica that had
-- not yet seen the last INCRs -- so a token is never issued twice. Tokens are only ever
-- compared whole, for equality.
-- An ID without a job record is dead-lettered with the reason, never dropped.
-- Per leased job: one HMGET, one HSET, one ZADD, all with string arguments (the hot
-- path; see BENCHMARKS.md).
local prefix = ARGV[1]
local now, now_s = redis_now()
local lease_until = string.format('%d', now + tonumber(ARGV[2]))
local max = tonumber(ARGV[3])
local worker = ARGV[4]
local result_ttl = tonumber(ARGV[6])
local pj = prefix .. 'job:'
local fk = KEYS[7]
local out = { '' }

local function next_due()
  local head = redis.call('ZRANGE', KEYS[3], '0', '0', 'WITHSCORES')
  return now_s .. '\t' .. (head[2] or '')
end

local prior = redis.call('GET', fk)
if prior then
  -- A retried call: hand back what it leased, nothing new.
  local leased = cjson.decode(prior)
  local token = leased[1]
  for i = 2, #leased do
    local id = leased[i]
    local jk = pj .. id
    local f = redis.call('HMGET', jk, 'status', 'token', 'attempts', 'spec', 'meta')
    if f[1] == 'running' and f[2] == token then
      out[#out + 1] = token .. '\t' .. f[3] .. '\t' .. job_meta(jk, f[5]) .. '\t' .. id
      out[#out + 1] = f[4] or ''
    end
  end
  out[1] = next_due()
  return out
end

local deltas = {}

local ids = redis.call('RPOP', KEYS[1], ARGV[3])
if ids then
  local token = redis.call('INCR', KEYS[5]) .. '.' .. string.sub(ARGV[7], -12)
  local leased = { token }
  for _, id in ipairs(ids) do
    local jk = pj .. id
    local f = redis.call('HMGET', jk, 'status', 'batch', 'attempts', 'spec', 'meta', 'cancel')
    local status = f[1]
    if not status then
      redis.call('HSET', jk, 'id', id, 'status', 'dead', 'attempts', 0, 'finished_at', now,
        'error', cjson.encode({ class = 'permanent',
          message = 'undecodable job: no job record for this ID' }))
      redis.call('ZADD', KEYS[6], now, id)
      ix_move(id, nil, 'dead')
      hist_add('dead', 1)
      redis.call('PUBLISH', prefix .. 'done', id)
    elseif status == 'queued' and f[6] == '1' then
      count_move(deltas, f[2], status, 'cancelled')
      ix_move(id, status, 'cancelled')
      redis.call('HSET', jk, 'status', 'cancelled', 'error', CANCELLED_ERROR)
      redis.call('HDEL', jk, 'cancel')
      finish(prefix, jk, id, now, result_ttl)
      cache_hand_over(prefix, jk, id, KEYS[1], KEYS[4])
    elseif status == 'queued' then
      local attempt = succ(f[3] or '0')
      if f[2] then
        count_move(deltas, f[2], status, 'running')
      end
      redis.call('HSET', jk, 'status', 'running', 'attempts', attempt, 'token', token,
        'worker', worker, 'started_at', now_s)
      redis.call('ZADD', KEYS[2], lease_until, id)
      ix_move(id, 'queued', 'running')
      out[#out + 1] = token .. '\t' .. attempt .. '\t' .. job_meta(jk, f[5]) .. '\t' .. id
      out[#out + 1] = f[4] or ''
      leased[#leased + 1] = id
    elseif redis.call('HDEL', jk, 'in_wait') == 1 then
      -- cancelled while queued: its entry is gone now, so its record may expire
      expire_ended(prefix, jk, id, result_ttl)
    end
    -- any other status is a stale list entry: skip it
  end
  if #leased > 1 then
    redis.call('SET', fk, cjson.encode(leased), 'PX', ARGV[2])
  end
end
write_counts(prefix, deltas, nil, false)
ix_flush(now, now_s)

if ids and #ids == max and redis.call('LLEN', KEYS[1]) > 0 then
  -- more work left: wake another idle worker
  redis.call('ZADD', KEYS[4], '0', '0')
end
out[1] = next_due()
return out
