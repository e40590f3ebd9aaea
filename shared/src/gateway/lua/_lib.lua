-- Shared helpers, prepended to every gateway script at load time (mod.rs).
-- Time is always Redis' own (TIME): gateways on several machines share one clock.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local function num(v)
  return tonumber(v) or 0
end
