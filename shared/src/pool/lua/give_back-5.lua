-- give_back: a job is done with its agent. The agent goes back to the pool
-- ("keep": idle, waiting jobs are told), or is paused or killed ("pause", "kill":
-- the caller then holds it for that and finishes with paused / forget). A pause or
-- terminate asked for while the job ran (`after`) is honoured now.
--
-- KEYS[1] agent:<id>, KEYS[2] held, KEYS[3] idle:<p>, KEYS[4] the change channel,
-- KEYS[5] waiters:<id>
--
-- ARGV[1] holder (job ID), ARGV[2] fence of the job's lease, ARGV[3] "keep" |
-- "pause" | "kill", ARGV[4] worker, ARGV[5] hold ttl for a pause or kill (ms),
-- ARGV[6] count the job as served (0/1)
--
-- Returns {1, outcome, fence}: outcome is what happens now ("keep", "pause",
-- "kill"; fence is the caller's for a pause or kill), or {0, state, fence} refused:
-- the job no longer held the agent (its lease was recovered by another worker).
local now = now_ms()
local rec = redis.call('HMGET', KEYS[1], 'state', 'fence', 'holder', 'id', 'persistent', 'after', 'profile')
if rec[1] ~= 'busy' or rec[2] ~= ARGV[2] or rec[3] ~= ARGV[1] then
  return { 0, rec[1] or 'gone', rec[2] or '0' }
end
if ARGV[6] == '1' then
  redis.call('HINCRBY', KEYS[1], 'jobs', 1)
end
redis.call('HSET', KEYS[1], 'last_used', now)
local outcome = ARGV[3]
if rec[6] == 'terminate' then
  outcome = 'kill'
elseif rec[6] == 'pause' and outcome == 'keep' then
  outcome = 'pause'
end
redis.call('HSET', KEYS[1], 'after', '')
if outcome == 'keep' then
  set_state(KEYS[1], 'idle', now)
  unhold(KEYS[1], KEYS[2], rec[4])
  if rec[5] ~= '1' then
    redis.call('ZADD', KEYS[3], now, rec[4])
  end
  redis.call('PUBLISH', KEYS[4], rec[7] .. ' ' .. rec[4])
  return { 1, 'keep', redis.call('HGET', KEYS[1], 'fence') }
end
if outcome == 'pause' then
  set_state(KEYS[1], 'pausing', now)
else
  set_state(KEYS[1], 'terminating', now)
end
local fence = hold(KEYS[1], KEYS[2], rec[4], 'pool', ARGV[4], now, tonumber(ARGV[5]))
return { 1, outcome, fence }
