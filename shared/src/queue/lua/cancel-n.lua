-- cancel: a queued or retrying job ends `cancelled` at once; a running job is flagged
-- and its worker told (PUBLISH on the cancel channel; lease renewal reports the flag
-- too, in case the message was missed). The worker kills the job's process and settles
-- it `cancelled`; `fail` and `fetch` honour the flag too.
--
-- A queued job's ID stays in `wait` (removing it would scan the whole list): fetch
-- drops it when it comes out, and only then starts its record's TTL (`in_wait`).
--
-- KEYS[1] wait, KEYS[2] delayed, KEYS[3] the record `job:<id>`, KEYS[4] its attempts,
-- then any number of further keys, in any order: its batch record, its result cache
-- entry and the records of the jobs waiting on that entry (the caller reads them
-- first: docs/ARCHITECTURE.md, "Keys and Redis Cluster"),
-- then the index tail (_index.lua)
--
-- ARGV[1] prefix, ARGV[2] job ID, ARGV[3] result TTL (ms)
--
-- Returns 'cancelled', 'cancelling', 'missing', 'ended:<status>' for a job that had
-- already ended (nothing changes), or 'reread' when a key it would touch was not
-- declared (its cache entry changed since the caller read it; nothing changes).
local prefix = ARGV[1]
local id = ARGV[2]
local jk = KEYS[3]
local status = redis.call('HGET', jk, 'status')
if not status then
  return 'missing'
end
if status == 'queued' or status == 'retrying' then
  if not job_keys_declared(prefix, jk, declared_keys(5)) then
    return 'reread'
  end
  local ttl = tonumber(ARGV[3])
  if status == 'queued' and cache_unfollow(prefix, jk, id) then
    -- it waited on an identical job (result cache): in no ready list, so it ends here
  elseif status == 'queued' then
    redis.call('HSET', jk, 'in_wait', '1')
    ttl = 0
  else
    redis.call('ZREM', KEYS[2], id)
  end
  set_status(prefix, jk, 'cancelled')
  redis.call('HSET', jk, 'error', CANCELLED_ERROR)
  local now, now_s = redis_now()
  finish(prefix, jk, id, now, ttl)
  if ttl == 0 then
    -- its record's TTL starts when fetch drops its ID; the index trim waits for that
    ix_ended(id, redis.call('HGET', jk, 'ix'), tonumber(ARGV[3]))
  end
  -- a job others wait on hands its cache entry over (the worker that fetches the next
  -- ready job, at the latest within its idle block, runs it: no marker key here)
  cache_hand_over(prefix, jk, id, KEYS[1], nil)
  ix_flush(now, now_s)
  return 'cancelled'
elseif status == 'running' then
  redis.call('HSET', jk, 'cancel', '1')
  redis.call('PUBLISH', prefix .. 'cancel', id)
  return 'cancelling'
end
return 'ended:' .. status
