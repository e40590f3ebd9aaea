-- lease_agent: give a job the agent it names (a persistent agent, addressed by ID).
-- Jobs for one agent run one at a time in submission order. The producer lists each
-- such job among the agent's waiters when it is submitted (unclaimed, "u"); a worker
-- running the job claims its place (an expiry it renews while it waits). The agent
-- goes to the first waiter in order; a job with an earlier waiter ahead of it waits:
--
--   - a claimed waiter ahead blocks until its claim lapses (its worker died: the
--     place becomes unclaimed again, for the job's next attempt to reclaim);
--   - an unclaimed waiter ahead (submitted, not yet taken by a worker) blocks for
--     `grace` from when a later job first found it in the way, then is passed over —
--     it keeps its place for when it is claimed — so a job cancelled or dead-lettered
--     before it ran never holds the agent up for more than the grace.
--
-- KEYS[1] agent:<id>, KEYS[2] held, KEYS[3] waiters:<id> (ZSET job -> order),
-- KEYS[4] waiter_expiry:<id> (HASH job -> claim expiry ms | "u" | "u:<first blocked ms>"),
-- KEYS[5] idle:<p>, KEYS[6] paused:<p>
--
-- ARGV[1] job ID, ARGV[2] worker, ARGV[3] hold ttl (ms), ARGV[4] host ("" = any),
-- ARGV[5] profile the job asks for, ARGV[6] the job's order (submission ms),
-- ARGV[7] how long a claim lasts without being renewed (ms), ARGV[8] grace (ms)
--
-- Returns {1, summary...} (as lease), {0, reason, state, position} wait, or
-- {-1, reason} never (unknown agent, another profile, another host, terminating).
local now = now_ms()
local rec = redis.call('HMGET', KEYS[1], 'id', 'state', 'profile', 'host', 'persistent', 'after', 'state_since')
if not rec[1] then
  redis.call('DEL', KEYS[3], KEYS[4])
  return { -1, 'unknown agent ID' }
end
if rec[3] ~= ARGV[5] then
  return { -1, 'the agent is of profile ' .. rec[3] }
end
if ARGV[4] ~= '' and rec[4] ~= '' and rec[4] ~= ARGV[4] then
  return { -1, 'the agent runs on host ' .. rec[4] .. ' (local provider), not this one' }
end
if rec[2] == 'terminating' or rec[6] == 'terminate' then
  return { -1, 'the agent is being terminated' }
end
-- Its holder's hold expired (the worker died) and nobody adopted it yet: adopt it
-- here, as `adopt` would, so waiting jobs need not wait for a maintenance round.
local holder = redis.call('HMGET', KEYS[1], 'hold_until', 'holder', 'holder_order')
if (rec[2] == 'busy' or rec[2] == 'resuming') and rec[5] == '1'
    and tonumber(holder[1] or 0) > 0 and tonumber(holder[1]) < now then
  if holder[2] ~= '' and holder[2] ~= 'pool' and holder[3] then
    redis.call('ZADD', KEYS[3], 'NX', tonumber(holder[3]), holder[2])
    redis.call('HSET', KEYS[4], holder[2], 'u:' .. now)
  end
  local rested = 'idle'
  if rec[2] == 'resuming' then
    rested = 'paused'
  end
  set_state(KEYS[1], rested, now)
  unhold(KEYS[1], KEYS[2], rec[1])
  rec[2] = rested
end
-- Claim (or renew) this job's place.
redis.call('ZADD', KEYS[3], 'NX', tonumber(ARGV[6]), ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], now + tonumber(ARGV[7]))
-- Is anyone ahead?
local grace = tonumber(ARGV[8])
local blocked = false
local ahead = redis.call('ZRANGE', KEYS[3], 0, 49)
-- Every waiter ahead is looked at (not only the first that blocks), so that the
-- graces of several unclaimed places run at once rather than one after another.
for _, job in ipairs(ahead) do
  if job == ARGV[1] then
    break
  end
  local v = redis.call('HGET', KEYS[4], job)
  if not v then
    redis.call('ZREM', KEYS[3], job)
  elseif string.sub(v, 1, 1) == 'u' then
    local since = tonumber(string.sub(v, 3))
    if not since then
      redis.call('HSET', KEYS[4], job, 'u:' .. now)
      blocked = true
    elseif now - since < grace then
      blocked = true
    end
  elseif tonumber(v) < now then
    -- Its worker stopped renewing: back to unclaimed, for its next attempt.
    redis.call('HSET', KEYS[4], job, 'u:' .. now)
    blocked = true
  else
    blocked = true
  end
end
local free = (rec[2] == 'idle' or rec[2] == 'paused') and rec[6] ~= 'pause'
if free and not blocked then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  local next_state = 'busy'
  if rec[2] == 'paused' then
    next_state = 'resuming'
    redis.call('ZREM', KEYS[6], rec[1])
  else
    redis.call('ZREM', KEYS[5], rec[1])
  end
  set_state(KEYS[1], next_state, now)
  hold(KEYS[1], KEYS[2], rec[1], ARGV[1], ARGV[2], now, tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'last_used', now, 'holder_order', ARGV[6])
  local s = summary(KEYS[1], now, now - tonumber(rec[7] or now))
  return { 1, unpack(s) }
end
local position = redis.call('ZRANK', KEYS[3], ARGV[1])
return { 0, 'wait', rec[2], position }
