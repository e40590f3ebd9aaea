-- renew_slots: a live worker extends the holds of the sandboxes it runs and the creates
-- it has in flight. One whose hold had already expired and been reclaimed (the worker
-- stalled longer than the hold) is put back: it is running, so it counts, even if that
-- puts the count over the cap for a while. One that another worker released meanwhile
-- (it killed or paused the sandbox) is not: it no longer runs.
--
-- KEYS[1] slots     ZSET holder -> hold expiry (ms, Redis clock)
-- KEYS[2] released  ZSET holder -> when it may be forgotten (ms, Redis clock)
--
-- ARGV[1] hold (ms), ARGV[2..] holders
--
-- Returns {put back, released}: the holders that had lost their slot and were put
-- back, and those released by someone (the caller stops holding them).
local now = now_ms()
local expiry = now + tonumber(ARGV[1])
local lost, released = {}, {}
for i = 2, #ARGV do
  local gone = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if gone and tonumber(gone) > now then
    redis.call('ZREM', KEYS[1], ARGV[i])
    released[#released + 1] = ARGV[i]
  elseif redis.call('ZADD', KEYS[1], expiry, ARGV[i]) == 1 then
    lost[#lost + 1] = ARGV[i]
  end
end
return { lost, released }
