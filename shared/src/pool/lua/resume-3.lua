-- resume: start resuming a paused agent for a `resume` command (jobs resume theirs
-- through lease / lease_agent). The caller then holds it, resumes its sandbox, checks
-- it and finishes with `ready` ("idle").
--
-- KEYS[1] agent:<id>, KEYS[2] held, KEYS[3] paused:<p>
-- ARGV[1] worker, ARGV[2] hold ttl (ms)
--
-- Returns {1, fence, sandbox} resuming, {3, state} nothing to do (running already),
-- {0, state} refused (being paused or terminated: try again later).
local now = now_ms()
local rec = redis.call('HMGET', KEYS[1], 'id', 'state', 'sandbox', 'after')
if not rec[1] then
  return { 0, 'gone' }
end
if rec[2] == 'paused' then
  redis.call('ZREM', KEYS[3], rec[1])
  set_state(KEYS[1], 'resuming', now)
  local fence = hold(KEYS[1], KEYS[2], rec[1], 'pool', ARGV[1], now, tonumber(ARGV[2]))
  return { 1, fence, rec[3] }
end
if rec[2] == 'pausing' or rec[2] == 'terminating' then
  return { 0, rec[2] }
end
if rec[4] == 'pause' then
  redis.call('HSET', KEYS[1], 'after', '')
end
return { 3, rec[2] }
