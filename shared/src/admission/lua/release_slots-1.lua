-- release_slots: sandboxes stopped running (killed, paused, found gone) or a create in
-- flight failed: their slots are free. Any worker may release any sandbox's slot (a
-- worker that kills a dead worker's sandbox frees its slot at once).
--
-- KEYS[1] slots  ZSET holder -> hold expiry (ms, Redis clock)
--
-- ARGV[1..] holders
--
-- Returns how many of them held a slot.
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('ZREM', KEYS[1], ARGV[i])
end
return n
