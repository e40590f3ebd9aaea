-- acquire: may one request go to the provider now under this limiter? A GCRA per
-- resource (requests, tokens) over the limiter's minute, plus a pause that a 429 or an
-- exhausted `remaining` header set for the whole group (see observe-1.lua).
--
-- KEYS[1] limiter HASH  tat_req, tat_tok (theoretical arrival times, ms) and
--                       blocked_until (ms), all on Redis' clock
--
-- ARGV[1] requests per minute (0 = none), ARGV[2] tokens per minute (0 = none),
-- ARGV[3] this request's estimated tokens, ARGV[4] requests allowed in a burst (>= 1),
-- ARGV[5] reservation horizon (ms; 0 = none)
--
-- Returns {1, 0} go (and counted); {2, ms} a slot that many ms ahead is reserved (and
-- counted): go then without asking again — so waiting requests take every slot the
-- limit allows, with no gap between one's turn and its next ask; or {0, ms} wait that
-- long and ask again (a pause for the group, or a slot beyond the horizon).
local now = now_ms()
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, burst = tonumber(ARGV[3]), math.max(1, tonumber(ARGV[4]))
local horizon = tonumber(ARGV[5]) or 0
local l = redis.call('HMGET', KEYS[1], 'tat_req', 'tat_tok', 'blocked_until')
local blocked = num(l[3])
if blocked > now then
  return { 0, math.ceil(blocked - now) }
end
-- The earliest time each GCRA lets this request go.
local at = now
local req_tat, interval, tok_tat, per
if rpm > 0 then
  interval = 60000 / rpm
  req_tat = math.max(num(l[1]), now)
  at = math.max(at, req_tat - interval * (burst - 1))
end
if tpm > 0 and tokens > 0 then
  per = 60000 / tpm
  tok_tat = math.max(num(l[2]), now)
  -- A minute's tokens may go at once; a request larger than that waits for an empty
  -- bucket rather than forever.
  at = math.max(at, tok_tat + math.min(tokens * per, 60000) - 60000)
end
local wait = math.ceil(at - now)
if wait > 0 and wait > horizon then
  return { 0, wait }
end
if req_tat then redis.call('HSET', KEYS[1], 'tat_req', math.max(req_tat, at) + interval) end
if tok_tat then redis.call('HSET', KEYS[1], 'tat_tok', math.max(tok_tat, at) + tokens * per) end
redis.call('PEXPIRE', KEYS[1], 3600000)
if wait > 0 then
  return { 2, wait }
end
return { 1, 0 }
