-- fail: settle an attempt that did not succeed, as the worker decided:
--   retry      -> `retrying`, due again after the backoff delay (delayed set)
--   dead       -> `dead`, in the dead-letter set with the reason; kept until retried or purged
--   cancelled  -> `cancelled`; ends the job
--   release    -> back to the front of the ready list at once, the attempt not counted
--                 (graceful shutdown handing unfinished work back)
-- Fenced like complete: a stale attempt's call is refused.
-- A job whose cancellation was requested (its `cancel` flag) ends `cancelled`, whatever
-- the worker decided: the attempt may have ended another way before it saw the cancel.
--
-- KEYS[1] active, KEYS[2] wait, KEYS[3] delayed, KEYS[4] marker, KEYS[5] dead,
-- KEYS[6] the record `job:<id>`, KEYS[7] its attempts `attempts:<id>`,
-- then any number of further keys, in any order: its batch record, its result cache
-- entry and the records of the jobs waiting on that entry (the caller reads them
-- first: docs/ARCHITECTURE.md, "Keys and Redis Cluster"),
-- then the index tail (_index.lua)
--
-- ARGV[1] prefix, ARGV[2] job ID, ARGV[3] token, ARGV[4] decision,
-- ARGV[5] delay (ms; the job is due at Redis' clock + delay),
-- ARGV[6] error JSON, ARGV[7] attempt record JSON, ARGV[8] result TTL (ms)
--
-- Returns 1 done, 2 already done by this token, 0 refused (stale), 4 not done: a key
-- it would touch was not declared (its cache entry gained a follower since the caller
-- read it; read again and retry).
local prefix = ARGV[1]
local id = ARGV[2]
local jk = KEYS[6]
local fence = check_fence(jk, ARGV[3])
if fence == 'settled' then
  return 2
elseif fence ~= 'ok' then
  return 0
end
if not job_keys_declared(prefix, jk, declared_keys(8)) then
  return 4
end
local now, now_s = redis_now()
local decision = ARGV[4]
redis.call('ZREM', KEYS[1], id)
local f = redis.call('HMGET', jk, 'started_at', 'cancel')
keep_first_start(jk, f[1])
if decision ~= 'release' then
  redis.call('HSET', jk, 'error', ARGV[6])
  redis.call('RPUSH', KEYS[7], ARGV[7])
end
if f[2] == '1' and decision ~= 'cancelled' then
  redis.call('HSET', jk, 'error', CANCELLED_ERROR)
  decision = 'cancelled'
end
if decision == 'retry' or decision == 'dead' then
  hist_add('failed', 1)
end
if decision == 'retry' then
  hist_add('retried', 1)
  local run_at = now + tonumber(ARGV[5])
  set_status(prefix, jk, 'retrying')
  redis.call('HSET', jk, 'run_at', run_at)
  redis.call('ZADD', KEYS[3], run_at, id)
  redis.call('ZADD', KEYS[4], 0, '0')
elseif decision == 'release' then
  redis.call('HINCRBY', jk, 'attempts', -1)
  set_status(prefix, jk, 'queued')
  redis.call('RPUSH', KEYS[2], id)
  redis.call('ZADD', KEYS[4], 0, '0')
elseif decision == 'dead' then
  bury(prefix, jk, id, now, KEYS[5])
  cache_hand_over(prefix, jk, id, KEYS[2], KEYS[4])
else
  set_status(prefix, jk, 'cancelled')
  redis.call('HDEL', jk, 'cancel')
  finish(prefix, jk, id, now, tonumber(ARGV[8]))
  cache_hand_over(prefix, jk, id, KEYS[2], KEYS[4])
end
ix_flush(now, now_s)
return 1
