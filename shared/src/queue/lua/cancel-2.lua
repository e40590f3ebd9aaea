-- cancel: a queued or retrying job ends `cancelled` at once; a running job is flagged
-- and its worker told (PUBLISH on the cancel channel; lease renewal reports the flag
-- too, in case the message was missed). The worker kills the job's process and settles
-- it `cancelled`.
--
-- KEYS[1] wait, KEYS[2] delayed
--
-- ARGV[1] prefix, ARGV[2] job ID, ARGV[3] now (ms), ARGV[4] result TTL (ms)
--
-- Returns 'cancelled', 'cancelling', 'missing', or 'ended:<status>' for a job that had
-- already ended (nothing changes).
local prefix = ARGV[1]
local id = ARGV[2]
local jk = job_key(prefix, id)
local status = redis.call('HGET', jk, 'status')
if not status then
  return 'missing'
end
if status == 'queued' or status == 'retrying' then
  redis.call('LREM', KEYS[1], 0, id)
  redis.call('ZREM', KEYS[2], id)
  set_status(prefix, jk, 'cancelled')
  redis.call('HSET', jk, 'error', cjson.encode({ class = 'cancelled',
    message = 'cancelled before it ran to the end' }))
  finish(prefix, jk, id, tonumber(ARGV[3]), tonumber(ARGV[4]))
  return 'cancelled'
elseif status == 'running' then
  redis.call('HSET', jk, 'cancel', '1')
  redis.call('PUBLISH', prefix .. 'cancel', id)
  return 'cancelling'
end
return 'ended:' .. status
