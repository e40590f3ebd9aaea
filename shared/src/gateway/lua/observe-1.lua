-- observe: what a provider's answer says about the limit: tokens used beyond the
-- estimate are charged to the token GCRA, and a 429 (its retry-after) or a
-- `remaining: 0` header (until its reset) pauses the whole group, every worker's
-- requests alike, instead of each agent retrying on its own.
--
-- KEYS[1] limiter HASH  (see acquire-1.lua)
--
-- ARGV[1] extra tokens (may be negative), ARGV[2] tokens per minute (0 = none),
-- ARGV[3] pause (ms from now; 0 = none)
--
-- Returns the pause in force (ms from now).
local now = now_ms()
local extra, tpm, pause = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and extra ~= 0 then
  local tat = math.max(num(redis.call('HGET', KEYS[1], 'tat_tok')), now - 60000)
  redis.call('HSET', KEYS[1], 'tat_tok', tat + extra * 60000 / tpm)
end
local blocked = num(redis.call('HGET', KEYS[1], 'blocked_until'))
if pause > 0 and now + pause > blocked then
  blocked = now + pause
  redis.call('HSET', KEYS[1], 'blocked_until', blocked)
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return math.max(0, math.ceil(blocked - now))
