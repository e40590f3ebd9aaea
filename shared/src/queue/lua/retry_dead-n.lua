-- retry_dead: give dead-lettered jobs a fresh set of attempts. Their attempt history
-- is kept (the attempts list grows); the attempt counter starts again from zero, and a
-- cancel requested before the job died is forgotten. A dead record without a spec
-- cannot run: it ends `failed` (as purge_dead does) instead of staying forever.
--
-- KEYS[1] dead, KEYS[2] wait, KEYS[3] marker, then per job: its record `job:<id>` and
-- attempts `attempts:<id>`; then any number of further keys, in any order: the jobs'
-- batch records (and cache entries with their followers' records), read by the caller
-- first (docs/ARCHITECTURE.md, "Keys and Redis Cluster"); then the index tail
-- (_index.lua). A job whose batch record was not declared is left dead (not counted).
--
-- ARGV[1] prefix, ARGV[2] result TTL (ms),
-- then job IDs (the caller reads the oldest of the dead set when the user named none)
--
-- Returns the number of jobs requeued.
local prefix = ARGV[1]
local ids = dead_ids(3)
local now, now_s = redis_now()
local n = 0
local declared = declared_keys(4)
for j, id in ipairs(ids) do
  local jk = KEYS[2 + 2 * j]
  if job_keys_declared(prefix, jk, declared) and redis.call('ZREM', KEYS[1], id) == 1 then
    if redis.call('HEXISTS', jk, 'spec') == 1 then
      redis.call('PERSIST', jk)
      redis.call('PERSIST', KEYS[3 + 2 * j])
      redis.call('HSET', jk, 'attempts', 0)
      redis.call('HDEL', jk, 'finished_at', 'cancel')
      set_status(prefix, jk, 'queued')
      redis.call('LPUSH', KEYS[2], id)
      hist_add('retried', 1)
      n = n + 1
    elseif redis.call('EXISTS', jk) == 1 then
      set_status(prefix, jk, 'failed')
      finish(prefix, jk, id, now, tonumber(ARGV[2]))
    end
  end
end
if n > 0 then
  redis.call('ZADD', KEYS[3], 0, '0')
end
ix_flush(now, now_s)
return n
