-- renew_slots: a live worker extends the holds of the sandboxes it runs and the creates
-- it has in flight. One whose hold had already expired and been reclaimed (the worker
-- stalled longer than the hold) is put back: it is running, so it counts, even if that
-- puts the count over the cap for a while.
--
-- KEYS[1] slots  ZSET holder -> hold expiry (ms, Redis clock)
--
-- ARGV[1] hold (ms), ARGV[2..] holders
--
-- Returns the holders that had lost their slot and were put back.
local expiry = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], expiry, ARGV[i]) == 1 then
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
