-- adopt: take over an agent whose hold expired (its worker was killed or lost Redis
-- for longer than a hold), whatever worker runs this — a restarted worker under any
-- name, or any other. A persistent agent held by a job goes back to idle (its files
-- are kept); a persistent agent caught resuming rests paused (a later lease resumes
-- it again) — and the job it held gets its place back at the head of the agent's
-- waiters (unclaimed: later jobs wait a grace for its next attempt). Anything else unfinished becomes the caller's to finish: a pause to
-- redo (pausing), a kill to do (terminating: a pooled agent whose job died, a
-- half-made launch, a kill that never was confirmed).
--
-- KEYS[1] agent:<id>, KEYS[2] held, KEYS[3] the change channel, KEYS[4] waiters:<id>,
-- KEYS[5] waiter_expiry:<id>
-- ARGV[1] worker, ARGV[2] hold ttl (ms)
--
-- Returns {0} nothing to adopt (the hold is live, or the agent is gone), {1, "free"}
-- returned to the pool, or {2, action, fence, sandbox} with action "pause" | "kill":
-- the caller's to finish.
local now = now_ms()
local rec = redis.call('HMGET', KEYS[1], 'id', 'state', 'hold_until', 'persistent', 'sandbox', 'profile', 'holder', 'holder_order')
if not rec[1] then
  return { 0 }
end
local score = redis.call('ZSCORE', KEYS[2], rec[1])
if not score or tonumber(score) > now then
  return { 0 }
end
local state = rec[2]
if rec[4] == '1' and (state == 'busy' or state == 'resuming') and rec[7] ~= 'pool' and rec[8] then
  redis.call('ZADD', KEYS[4], 'NX', tonumber(rec[8]), rec[7])
  redis.call('HSET', KEYS[5], rec[7], 'u:' .. now)
end
if rec[4] == '1' and state == 'busy' then
  set_state(KEYS[1], 'idle', now)
  unhold(KEYS[1], KEYS[2], rec[1])
  redis.call('PUBLISH', KEYS[3], rec[6] .. ' ' .. rec[1])
  return { 1, 'free' }
end
if rec[4] == '1' and state == 'resuming' then
  set_state(KEYS[1], 'paused', now)
  unhold(KEYS[1], KEYS[2], rec[1])
  redis.call('PUBLISH', KEYS[3], rec[6] .. ' ' .. rec[1])
  return { 1, 'free' }
end
local action = 'kill'
if state == 'pausing' then
  action = 'pause'
else
  set_state(KEYS[1], 'terminating', now)
end
local fence = hold(KEYS[1], KEYS[2], rec[1], 'pool', ARGV[1], now, tonumber(ARGV[2]))
return { 2, action, fence, rec[5] }
