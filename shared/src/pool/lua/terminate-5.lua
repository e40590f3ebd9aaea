-- terminate: start killing an agent (a `terminate` command, scale down, refresh, the
-- policy: recycle, lifetime, paused too long, eviction). The caller then holds it,
-- kills its sandbox and finishes with `forget`. A busy agent is never killed under
-- its job: a command's terminate is noted (`after`) and done when the job gives it
-- back; the policy's is refused.
--
-- KEYS[1] agent:<id>, KEYS[2] held, KEYS[3] idle:<p>, KEYS[4] paused:<p>,
-- KEYS[5] the change channel
--
-- ARGV[1] worker, ARGV[2] hold ttl (ms), ARGV[3] "command" | "policy" | "holder",
-- ARGV[4] expected fence ("" = any): the policy decided on what it read, and a
-- change since (a lease, say) makes its decision stale; "holder": the caller holds
-- the agent under this fence (a launch or resume that failed, a job's agent lost)
-- and ends it whatever its state
--
-- Returns {1, fence, sandbox} terminating (the caller's now), {2, state} noted for
-- after the job, {3, state} already terminating, {0, state} refused.
local now = now_ms()
local rec = redis.call('HMGET', KEYS[1], 'id', 'state', 'sandbox', 'fence', 'profile')
if not rec[1] then
  return { 0, 'gone' }
end
if ARGV[4] ~= '' and rec[4] ~= ARGV[4] then
  return { 0, rec[2] }
end
if rec[2] == 'terminating' then
  return { 3, rec[2] }
end
if rec[2] == 'idle' or rec[2] == 'paused' or (ARGV[3] == 'holder' and ARGV[4] ~= '') then
  redis.call('ZREM', KEYS[3], rec[1])
  redis.call('ZREM', KEYS[4], rec[1])
  set_state(KEYS[1], 'terminating', now)
  redis.call('HSET', KEYS[1], 'after', '')
  local fence = hold(KEYS[1], KEYS[2], rec[1], 'pool', ARGV[1], now, tonumber(ARGV[2]))
  redis.call('PUBLISH', KEYS[5], rec[5] .. ' ' .. rec[1])
  return { 1, fence, rec[3] }
end
if ARGV[3] == 'command' then
  redis.call('HSET', KEYS[1], 'after', 'terminate')
  return { 2, rec[2] }
end
return { 0, rec[2] }
