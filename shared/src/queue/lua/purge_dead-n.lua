-- purge_dead: remove jobs from the dead-letter set for good. Their records stay, with
-- status `failed`, until the result TTL runs out, so `fleet status` still explains them.
--
-- KEYS[1] dead, then per job: its record `job:<id>`, attempts `attempts:<id>` and
-- answer `answer:<id>`; then any number of further keys, in any order: the jobs' batch
-- records (and cache entries with their followers' records), read by the caller first
-- (docs/ARCHITECTURE.md, "Keys and Redis Cluster"); then the index tail (_index.lua).
-- A job whose batch record was not declared is left dead (not counted).
--
-- ARGV[1] prefix, ARGV[2] result TTL (ms),
-- then job IDs (the caller reads the oldest of the dead set when the user named none)
--
-- Returns the number of jobs purged.
local prefix = ARGV[1]
local now, now_s = redis_now()
local ids = dead_ids(3)
local n = 0
local declared = declared_keys(2)
for j, id in ipairs(ids) do
  local jk = KEYS[3 * j - 1]
  if job_keys_declared(prefix, jk, declared) and redis.call('ZREM', KEYS[1], id) == 1 then
    set_status(prefix, jk, 'failed')
    finish(prefix, jk, id, now, tonumber(ARGV[2]))
    -- a purged job keeps no stored answer (a dead one has none; this is for safety)
    redis.call('DEL', KEYS[3 * j + 1])
    n = n + 1
  end
end
ix_flush(now, now_s)
return n
