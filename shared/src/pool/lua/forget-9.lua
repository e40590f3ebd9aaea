-- forget: the agent's sandbox is confirmed killed (or never existed): remove the
-- agent from the registry. Jobs waiting for it by ID learn it is gone.
--
-- KEYS[1] agent:<id>, KEYS[2] all, KEYS[3] profile:<p>, KEYS[4] held, KEYS[5] idle:<p>,
-- KEYS[6] paused:<p>, KEYS[7] waiters:<id>, KEYS[8] the change channel,
-- KEYS[9] waiter_expiry:<id>
-- ARGV[1] fence (the caller's, from terminate / give_back / paused / ready / recover)
--
-- Returns {1} removed, {0, state, fence} refused.
local rec = redis.call('HMGET', KEYS[1], 'state', 'fence', 'id', 'profile')
if rec[1] ~= 'terminating' or rec[2] ~= ARGV[1] then
  return { 0, rec[1] or 'gone', rec[2] or '0' }
end
redis.call('DEL', KEYS[1])
for i = 2, 6 do
  redis.call('ZREM', KEYS[i], rec[3])
end
-- Jobs waiting for it learn it is gone at their next look (the channel wakes them).
redis.call('DEL', KEYS[7], KEYS[9])
redis.call('PUBLISH', KEYS[8], rec[4] .. ' ' .. rec[3])
return { 1 }
