-- acquire: may one request go to the provider now under this limiter? A GCRA per
-- resource (requests, tokens) over the limiter's minute, plus a pause that a 429 or an
-- exhausted `remaining` header set for the whole group (see observe-1.lua).
--
-- KEYS[1] limiter HASH  tat_req, tat_tok (theoretical arrival times, ms) and
--                       blocked_until (ms), all on Redis' clock
--
-- ARGV[1] requests per minute (0 = none), ARGV[2] tokens per minute (0 = none),
-- ARGV[3] this request's estimated tokens, ARGV[4] requests allowed in a burst (>= 1)
--
-- Returns {1, 0} go (and counted), or {0, ms} wait that long and ask again.
local now = now_ms()
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, burst = tonumber(ARGV[3]), math.max(1, tonumber(ARGV[4]))
local l = redis.call('HMGET', KEYS[1], 'tat_req', 'tat_tok', 'blocked_until')
local blocked = num(l[3])
if blocked > now then
  return { 0, math.ceil(blocked - now) }
end
local new_req, new_tok
if rpm > 0 then
  local interval = 60000 / rpm
  local tat = math.max(num(l[1]), now)
  local allow_at = tat - interval * (burst - 1)
  if now < allow_at then
    return { 0, math.ceil(allow_at - now) }
  end
  new_req = tat + interval
end
if tpm > 0 and tokens > 0 then
  local per = 60000 / tpm
  local tat = math.max(num(l[2]), now)
  -- A minute's tokens may go at once; a request larger than that waits for an empty
  -- bucket rather than forever.
  local allow_at = tat + math.min(tokens * per, 60000) - 60000
  if now < allow_at then
    return { 0, math.ceil(allow_at - now) }
  end
  new_tok = tat + tokens * per
end
if new_req then redis.call('HSET', KEYS[1], 'tat_req', new_req) end
if new_tok then redis.call('HSET', KEYS[1], 'tat_tok', new_tok) end
redis.call('PEXPIRE', KEYS[1], 3600000)
return { 1, 0 }
