-- paused: the caller paused the agent's sandbox. The agent rests paused (pooled
-- agents in paused:<p>, where a job may resume it); a terminate asked for meanwhile
-- turns it to terminating, still the caller's to kill.
--
-- KEYS[1] agent:<id>, KEYS[2] held, KEYS[3] paused:<p>, KEYS[4] the change channel
-- ARGV[1] fence
--
-- Returns {1, fence} paused, {2, fence} now terminating (kill it), {0, state, fence}
-- refused (the pause lost the agent: another worker recovered it).
local now = now_ms()
local rec = redis.call('HMGET', KEYS[1], 'state', 'fence', 'id', 'persistent', 'after', 'profile')
if rec[1] ~= 'pausing' or rec[2] ~= ARGV[1] then
  return { 0, rec[1] or 'gone', rec[2] or '0' }
end
if rec[5] == 'terminate' then
  set_state(KEYS[1], 'terminating', now)
  redis.call('HSET', KEYS[1], 'after', '')
  return { 2, bump_fence(KEYS[1]) }
end
set_state(KEYS[1], 'paused', now)
redis.call('HSET', KEYS[1], 'after', '')
unhold(KEYS[1], KEYS[2], rec[3])
if rec[4] ~= '1' then
  redis.call('ZADD', KEYS[3], now, rec[3])
end
redis.call('PUBLISH', KEYS[4], rec[6] .. ' ' .. rec[3])
return { 1, redis.call('HGET', KEYS[1], 'fence') }
