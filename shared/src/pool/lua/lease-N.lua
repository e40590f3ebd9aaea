-- lease: give a job one of the profile's pooled agents — an idle one, else a paused
-- one (which the job then resumes). The caller read the candidates (the first few
-- members of idle:<p> and paused:<p>) just before; each is checked again here, so an
-- agent another worker took meanwhile is skipped, never handed out twice.
--
-- KEYS[1] held, KEYS[2] idle:<p>, KEYS[3] paused:<p>, KEYS[4..] agent:<id> of each
-- candidate, idle ones first
--
-- ARGV[1] holder (job ID), ARGV[2] worker, ARGV[3] hold ttl (ms), ARGV[4] host ("" =
-- any), ARGV[5] profile, ARGV[6] refuse agents older than this (ms; 0 = no limit):
-- they are near their sandbox's lifetime limit and the policy recycles them,
-- ARGV[7..] the candidates' IDs, in the order of KEYS[4..]
--
-- Returns {0} none of the candidates was free, else {1, summary...} where the
-- summary is (id, sandbox, state, fence, jobs, persistent, remaining sandbox lifetime
-- ms, age ms, profile, rested ms) with state "busy" (the job's now) or "resuming" (the job resumes it).
local now = now_ms()
local ttl = tonumber(ARGV[3])
local max_age = tonumber(ARGV[6])
for i = 4, #KEYS do
  local rec = redis.call('HMGET', KEYS[i], 'id', 'state', 'persistent', 'host', 'profile', 'created', 'after', 'state_since')
  local id = rec[1]
  local usable = rec[3] == '0' and rec[5] == ARGV[5] and rec[7] == ''
    and (ARGV[4] == '' or rec[4] == '' or rec[4] == ARGV[4])
    and (max_age == 0 or now - tonumber(rec[6]) <= max_age)
  if id and usable and rec[2] == 'idle' then
    redis.call('ZREM', KEYS[2], id)
    set_state(KEYS[i], 'busy', now)
    hold(KEYS[i], KEYS[1], id, ARGV[1], ARGV[2], now, ttl)
    redis.call('HSET', KEYS[i], 'last_used', now)
    local s = summary(KEYS[i], now, now - tonumber(rec[8] or now))
    return { 1, unpack(s) }
  elseif id and usable and rec[2] == 'paused' then
    redis.call('ZREM', KEYS[3], id)
    set_state(KEYS[i], 'resuming', now)
    hold(KEYS[i], KEYS[1], id, ARGV[1], ARGV[2], now, ttl)
    redis.call('HSET', KEYS[i], 'last_used', now)
    local s = summary(KEYS[i], now, now - tonumber(rec[8] or now))
    return { 1, unpack(s) }
  elseif not id then
    -- A stale index entry for an agent that is gone.
    redis.call('ZREM', KEYS[2], ARGV[i + 3])
    redis.call('ZREM', KEYS[3], ARGV[i + 3])
  end
end
return { 0 }
