-- end_attempt: the attempt is over; its token is refused from now on. A budget
-- refusal stays recorded as such (the job ends `budget_exceeded`).
--
-- KEYS[1] attempt  HASH  the token's record
--
-- Returns {state before, requests still in flight}.
local a = redis.call('HMGET', KEYS[1], 'state', 'inflight')
if not a[1] then
  return { 'unknown', 0 }
end
if a[1] == 'live' then
  redis.call('HSET', KEYS[1], 'state', 'ended')
end
return { a[1], tonumber(a[2]) or 0 }
