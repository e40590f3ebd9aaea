-- ready: a launch or a resume finished; the agent's sandbox runs and the agent in it
-- is set up (launch) or checked (resume). It goes to its holder's job ("busy"), or
-- into the pool ("idle"), where waiting jobs are told of it.
--
-- KEYS[1] agent:<id>, KEYS[2] held, KEYS[3] idle:<p> (ZSET agent ID -> idle since),
-- KEYS[4] the pool's change channel
--
-- ARGV[1] fence, ARGV[2] "busy" | "idle", ARGV[3] sandbox lifetime from now (ms, 0 =
-- unchanged), ARGV[4] commit the agent runs ("" = unchanged), ARGV[5] hold ttl (ms)
--
-- Returns {1, fence} done, {0, state, fence} refused, {2, fence} a terminate was asked
-- for meanwhile: the agent is now terminating, held by the caller, who kills it.
local now = now_ms()
local rec = redis.call('HMGET', KEYS[1], 'state', 'fence', 'id', 'persistent', 'after', 'profile')
if (rec[1] ~= 'launching' and rec[1] ~= 'resuming') or rec[2] ~= ARGV[1] then
  return { 0, rec[1] or 'gone', rec[2] or '0' }
end
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[1], 'sandbox_until', now + tonumber(ARGV[3]))
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'commit', ARGV[4])
end
redis.call('HSET', KEYS[1], 'health', 'ok')
if rec[5] == 'terminate' and ARGV[2] == 'idle' then
  set_state(KEYS[1], 'terminating', now)
  redis.call('HSET', KEYS[1], 'after', '')
  local fence = bump_fence(KEYS[1])
  return { 2, fence }
end
if ARGV[2] == 'busy' then
  set_state(KEYS[1], 'busy', now)
  local fence = bump_fence(KEYS[1])
  redis.call('HSET', KEYS[1], 'last_used', now)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), rec[3])
  redis.call('HSET', KEYS[1], 'hold_until', now + tonumber(ARGV[5]))
  return { 1, fence }
end
set_state(KEYS[1], 'idle', now)
unhold(KEYS[1], KEYS[2], rec[3])
if rec[4] ~= '1' then
  redis.call('ZADD', KEYS[3], now, rec[3])
end
redis.call('PUBLISH', KEYS[4], rec[6] .. ' ' .. rec[3])
return { 1, redis.call('HGET', KEYS[1], 'fence') }
