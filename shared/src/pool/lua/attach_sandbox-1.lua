-- attach_sandbox: record the sandbox a launch created, as soon as it exists (so a
-- crash before setup ends still lets recovery kill it), with its lifetime.
--
-- KEYS[1] agent:<id>
-- ARGV[1] fence, ARGV[2] sandbox ID, ARGV[3] sandbox lifetime from now (ms)
--
-- Returns {1} recorded, {0, state, fence} refused (the launch lost its agent).
local rec = redis.call('HMGET', KEYS[1], 'state', 'fence')
if rec[1] ~= 'launching' or rec[2] ~= ARGV[1] then
  return { 0, rec[1] or 'gone', rec[2] or '0' }
end
redis.call('HSET', KEYS[1], 'sandbox', ARGV[2], 'sandbox_until', now_ms() + tonumber(ARGV[3]))
return { 1 }
