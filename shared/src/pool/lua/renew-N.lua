-- renew: a worker extends its holds on the agents it holds (a job's lease, or its own
-- pause, resume, launch or kill in progress). A hold that is no longer the worker's
-- (its fence moved: recovered after it expired) is reported, not renewed.
--
-- KEYS[1] held, KEYS[2..] agent:<id> of each hold
-- ARGV[1] worker, ARGV[2] hold ttl (ms), ARGV[2 + i] the fence of KEYS[1 + i]
--
-- Returns the indexes (1-based, among the holds) that were not renewed.
local now = now_ms()
local lost = {}
for i = 2, #KEYS do
  local rec = redis.call('HMGET', KEYS[i], 'fence', 'worker', 'id')
  if rec[1] == ARGV[i + 1] and rec[2] == ARGV[1] then
    local until_ms = now + tonumber(ARGV[2])
    redis.call('HSET', KEYS[i], 'hold_until', until_ms)
    redis.call('ZADD', KEYS[1], 'XX', until_ms, rec[3])
  else
    lost[#lost + 1] = i - 1
  end
end
return lost
