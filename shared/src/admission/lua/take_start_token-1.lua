-- take_start_token: the plan's create rate (creates and resumes per second), shared by
-- all workers. The bucket holds one token: the key holds the earliest time the next
-- start may be sent (GCRA with no burst). A caller takes the next free turn, at most
-- ARGV[2] away, and waits until it comes; turns are spaced by ARGV[1].
--
-- KEYS[1] next_start  STRING the next free turn (µs, Redis clock); expires once past
--
-- ARGV[1] interval between starts (µs), ARGV[2] the longest the caller will wait (µs)
--
-- Returns {1, wait µs}: the turn is taken, send after waiting that long; or
-- {0, wait µs}: the next turn is further away than the caller will wait (nothing taken).
local now = now_us()
local at = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local wait = at - now
if wait > tonumber(ARGV[2]) then
  return { 0, wait }
end
local next_at = at + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', next_at), 'PX',
  math.ceil((next_at - now) / 1000) + 1000)
return { 1, wait }
