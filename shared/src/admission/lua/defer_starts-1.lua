-- defer_starts: the provider answered 429 with Retry-After: no worker sends a start
-- before then (moves the next free turn later, never earlier).
--
-- KEYS[1] next_start  STRING the next free turn (µs, Redis clock)
--
-- ARGV[1] how long from now no start may be sent (µs)
--
-- Returns the µs until the next free turn.
local now = now_us()
local at = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%d', at), 'PX', math.ceil((at - now) / 1000) + 1000)
return at - now
