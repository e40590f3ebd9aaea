-- Shared helpers, prepended to every agent-registry script at load time (mod.rs).
--
-- An agent record is a HASH (registry.rs lists its fields). Every transition bumps
-- `fence`; whoever starts an operation on an agent (a job's lease, a pause, a kill)
-- gets the fence it set, and the script that finishes the operation is refused if
-- the fence moved: a transition that lost a race is reported, never overwritten.
-- Time is Redis' own (TIME), so workers whose clocks disagree share one timeline.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Bump an agent's fence and return the new one. It grows by 1 plus a nonce, the
-- microseconds of Redis' clock (0..999999), not by 1: after a failover to a replica
-- that had not seen the last bumps, the counter starts again from an older value, and
-- a step of 1 would hand out the same fence twice (the first holder's calls would be
-- accepted again). Fences are compared for equality only; a record takes about 9e9
-- bumps to leave the range Lua numbers count exactly.
local function bump_fence(key)
  local t = redis.call('TIME')
  return redis.call('HINCRBY', key, 'fence', 1 + tonumber(t[2]))
end

-- Add the time spent in the current state to active_ms or paused_ms, then enter
-- `state`. Running sandboxes (launching, idle, busy, ...) are billed; paused are not.
local function set_state(key, state, now)
  local old = redis.call('HMGET', key, 'state', 'state_since')
  if old[1] then
    local spent = math.max(0, now - tonumber(old[2] or now))
    if old[1] == 'paused' then
      redis.call('HINCRBY', key, 'paused_ms', spent)
    else
      redis.call('HINCRBY', key, 'active_ms', spent)
    end
  end
  redis.call('HSET', key, 'state', state, 'state_since', now)
end

-- Hand the agent to `holder` (a job ID, or "pool" for the fleet's own operations)
-- of `worker` until `now + ttl`; returns the new fence.
local function hold(key, held, id, holder, worker, now, ttl)
  local fence = bump_fence(key)
  redis.call('HSET', key, 'holder', holder, 'worker', worker, 'hold_until', now + ttl)
  redis.call('ZADD', held, now + ttl, id)
  return fence
end

-- Nobody holds the agent any more.
local function unhold(key, held, id)
  bump_fence(key)
  redis.call('HSET', key, 'holder', '', 'worker', '', 'hold_until', 0)
  redis.call('ZREM', held, id)
end

-- The fields a leaser needs, in one reply: id, sandbox, state, fence, jobs,
-- persistent, the sandbox's remaining lifetime (ms), age (ms), profile, and how long
-- it sat idle or paused before this lease (ms).
local function summary(key, now, rested)
  local r = redis.call('HMGET', key, 'id', 'sandbox', 'state', 'fence', 'jobs', 'persistent',
    'sandbox_until', 'created', 'profile')
  r[7] = math.max(0, tonumber(r[7] or 0) - now)
  r[8] = math.max(0, now - tonumber(r[8] or now))
  r[10] = rested
  return r
end
