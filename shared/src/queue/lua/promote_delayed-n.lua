-- promote_delayed: move due delayed jobs to `wait`, as named by `due_delayed` (the
-- first step). Run by a fetch whose reply says a delayed job is due.
--
-- Every key this script touches is in KEYS: per job its record (and the other keys
-- the caller names for a job: attempts, batch, cache and followers; only the record
-- and batch are touched here). Each job is checked again: it must still be in
-- `delayed` and due by Redis' clock, and its batch record declared; otherwise it is
-- left alone (a later call names it afresh). Nothing changes before this step.
-- A due ID without a job record leaves `delayed` (nothing to run).
--
-- KEYS[1] wait, KEYS[2] delayed, KEYS[3] marker, then the jobs' keys in any order,
-- then the index tail (_index.lua)
--
-- ARGV[1] prefix, ARGV[2..] the due job IDs
--
-- Returns the number of jobs made ready.
local prefix = ARGV[1]
local now = redis_now()
local declared = {}
for i = 4, #KEYS do
  declared[KEYS[i]] = true
end
local deltas = {}
local promoted = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local jk = job_key(prefix, id)
  local run_at = tonumber(redis.call('ZSCORE', KEYS[2], id))
  if run_at and run_at <= now and declared[jk] then
    local f = redis.call('HMGET', jk, 'status', 'batch')
    if not f[1] then
      redis.call('ZREM', KEYS[2], id)
    elseif not f[2] or f[2] == '' or declared[prefix .. 'batch:' .. f[2]] then
      redis.call('ZREM', KEYS[2], id)
      count_move(deltas, f[2], f[1], 'queued')
      ix_move(id, f[1], 'queued')
      redis.call('HSET', jk, 'status', 'queued')
      redis.call('HDEL', jk, 'run_at')
      redis.call('LPUSH', KEYS[1], id)
      promoted = promoted + 1
    end
  end
end
write_counts(prefix, deltas, nil, false)
ix_flush(now, string.format('%d', now))
if promoted > 0 then
  redis.call('ZADD', KEYS[3], '0', '0')
end
return promoted
