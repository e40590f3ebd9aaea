-- retry_dead: give dead-lettered jobs a fresh set of attempts. Their attempt history
-- is kept (the attempts list grows); the attempt counter starts again from zero, and a
-- cancel requested before the job died is forgotten. A dead record without a spec
-- cannot run: it ends `failed` (as purge_dead does) instead of staying forever.
--
-- KEYS[1] dead, KEYS[2] wait, KEYS[3] marker
--
-- ARGV[1] prefix, ARGV[2] max jobs, ARGV[3] now (ms), ARGV[4] result TTL (ms),
-- then job IDs (none: the oldest dead jobs, up to max)
--
-- Returns the number of jobs requeued.
local prefix = ARGV[1]
local ids = dead_ids(KEYS[1], 5, tonumber(ARGV[2]))
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local jk = job_key(prefix, id)
    if redis.call('HEXISTS', jk, 'spec') == 1 then
      redis.call('PERSIST', jk)
      redis.call('PERSIST', prefix .. 'attempts:' .. id)
      redis.call('HSET', jk, 'attempts', 0)
      redis.call('HDEL', jk, 'finished_at', 'cancel')
      set_status(prefix, jk, 'queued')
      redis.call('LPUSH', KEYS[2], id)
      n = n + 1
    elseif redis.call('EXISTS', jk) == 1 then
      set_status(prefix, jk, 'failed')
      finish(prefix, jk, id, tonumber(ARGV[3]), tonumber(ARGV[4]))
    end
  end
end
if n > 0 then
  redis.call('ZADD', KEYS[3], 0, '0')
end
return n
