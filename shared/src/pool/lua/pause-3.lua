-- pause: start pausing an idle agent (a `pause` command, or the idle policy). The
-- caller then holds it, pauses its sandbox and finishes with `paused`. A busy agent
-- is never paused under its job: a command's pause is noted (`after`) and done when
-- the job gives the agent back; the policy's is refused.
--
-- KEYS[1] agent:<id>, KEYS[2] held, KEYS[3] idle:<p>
--
-- ARGV[1] worker, ARGV[2] hold ttl (ms), ARGV[3] only if idle since at least this
-- (ms, Redis clock; 0 = any idle agent), ARGV[4] "command" | "policy"
--
-- Returns {1, fence, sandbox} pausing (the caller's now), {2, state} noted for after
-- the job, {3, state} nothing to do (already paused or pausing), {0, state} refused.
local now = now_ms()
local rec = redis.call('HMGET', KEYS[1], 'id', 'state', 'state_since', 'sandbox', 'after')
if not rec[1] then
  return { 0, 'gone' }
end
if rec[2] == 'paused' or rec[2] == 'pausing' then
  return { 3, rec[2] }
end
if rec[2] == 'idle' then
  local before = tonumber(ARGV[3])
  if before > 0 and tonumber(rec[3]) > now - before then
    return { 0, 'idle' }
  end
  redis.call('ZREM', KEYS[3], rec[1])
  set_state(KEYS[1], 'pausing', now)
  local fence = hold(KEYS[1], KEYS[2], rec[1], 'pool', ARGV[1], now, tonumber(ARGV[2]))
  return { 1, fence, rec[4] }
end
if ARGV[4] == 'command' and rec[2] ~= 'terminating' and rec[5] ~= 'terminate' then
  redis.call('HSET', KEYS[1], 'after', 'pause')
  return { 2, rec[2] }
end
return { 0, rec[2] }
