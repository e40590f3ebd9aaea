-- Shared helpers, prepended to every admission script at load time (mod.rs).
-- Time is always Redis' own (TIME), never a caller's: workers' clocks may disagree,
-- the server's is the one clock they all see.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
