-- purge_dead: remove jobs from the dead-letter set for good. Their records stay, with
-- status `failed`, until the result TTL runs out, so `fleet status` still explains them.
--
-- KEYS[1] dead
--
-- ARGV[1] prefix, ARGV[2] now (ms), ARGV[3] result TTL (ms), ARGV[4] max jobs,
-- then job IDs (none: the oldest dead jobs, up to max)
--
-- Returns the number of jobs purged.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local ids = dead_ids(KEYS[1], 5, tonumber(ARGV[4]))
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local jk = job_key(prefix, id)
    set_status(prefix, jk, 'failed')
    finish(prefix, jk, id, now, tonumber(ARGV[3]))
    -- a purged job keeps no stored answer (a dead one has none; this is for safety)
    redis.call('DEL', answer_key(prefix, id))
    n = n + 1
  end
end
return n
