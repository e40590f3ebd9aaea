-- launch: register a new agent (state launching) before its sandbox exists, so a
-- crash at any later point leaves a record that recovery and reconcile act on.
-- Refused when the profile already has `max` agents (the fleet-wide cap).
--
-- KEYS[1] agent:<id>  HASH   the new record
-- KEYS[2] all         ZSET   agent ID -> created (ms)
-- KEYS[3] profile:<p> ZSET   agent ID -> created (ms)
-- KEYS[4] held        ZSET   agent ID -> hold expiry (ms)
--
-- ARGV[1] id, ARGV[2] profile, ARGV[3] provider, ARGV[4] persistent (0/1),
-- ARGV[5] host (local provider: the machine; "" = any), ARGV[6] holder, ARGV[7] worker,
-- ARGV[8] hold ttl (ms), ARGV[9] max agents of the profile (0 = no cap),
-- ARGV[10] repo, ARGV[11] ephemeral (0/1), ARGV[12] model access ("gateway" / "direct")
--
-- Returns {1, fence} registered, {0, count} the profile is at its cap.
local now = now_ms()
local max = tonumber(ARGV[9])
local count = redis.call('ZCARD', KEYS[3])
if max > 0 and count >= max then
  return { 0, count }
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('agent ID already registered: ' .. ARGV[1])
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'profile', ARGV[2], 'provider', ARGV[3],
  'persistent', ARGV[4], 'host', ARGV[5], 'repo', ARGV[10], 'ephemeral', ARGV[11],
  'sandbox', '', 'state', 'launching', 'state_since', now, 'created', now, 'last_used', 0,
  'jobs', 0, 'active_ms', 0, 'paused_ms', 0, 'fence', 0, 'health', 'unknown', 'after', '',
  'sandbox_until', 0, 'commit', '', 'launched_by', ARGV[7], 'model_access', ARGV[12])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
local fence = hold(KEYS[1], KEYS[4], ARGV[1], ARGV[6], ARGV[7], now, tonumber(ARGV[8]))
return { 1, fence }
