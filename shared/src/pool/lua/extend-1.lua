-- extend: the holder extended the agent's sandbox lifetime at the provider; record
-- until when it now lives, so later leases skip the call while it covers them.
--
-- KEYS[1] agent:<id>
-- ARGV[1] fence (the holder's), ARGV[2] lifetime from now (ms)
--
-- Returns 1 recorded, 0 refused (not the holder any more).
local rec = redis.call('HMGET', KEYS[1], 'fence')
if rec[1] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'sandbox_until', now_ms() + tonumber(ARGV[2]))
return 1
