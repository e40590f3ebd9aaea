-- settle: a request admitted by `reserve` has ended (its body read to the end, or the
-- client gone): its reservation is replaced by what it used, on the attempt, the job,
-- the batch and the tenant's day. Runs whatever state the attempt is in, so spend that
-- arrives after the attempt ended is still counted.
--
-- KEYS[1] attempt    HASH  the token's record
-- KEYS[2] job_spend  HASH  the job's spend (also per model: `<model>|<field>`)
-- KEYS[3] batch      HASH  the batch's spend (touched only when the job has a batch)
-- KEYS[4] tenant_day HASH  the tenant's spend today (touched only when it has a tenant)
--
-- ARGV[1] reserved cost, ARGV[2] reserved tokens, ARGV[3] input, ARGV[4] output,
-- ARGV[5] cache_read, ARGV[6] cache_write, ARGV[7] cost (USD), ARGV[8] model ('' = none),
-- ARGV[9] 1 when the request was sent upstream (counted), 0 when it never left,
-- ARGV[10] 1 when its model has no price
--
-- Returns 1.
local reserved_cost = tonumber(ARGV[1])
local reserved_tokens = tonumber(ARGV[2])
local input, output = tonumber(ARGV[3]), tonumber(ARGV[4])
local cache_read, cache_write = tonumber(ARGV[5]), tonumber(ARGV[6])
local cost = tonumber(ARGV[7])
local tokens = input + output + cache_read + cache_write
local sent = ARGV[9] == '1'
local a = redis.call('HMGET', KEYS[1], 'batch', 'tenant')
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'inflight', -1)
end
local function add(key)
  redis.call('HINCRBY', key, 'input', input)
  redis.call('HINCRBY', key, 'output', output)
  redis.call('HINCRBY', key, 'cache_read', cache_read)
  redis.call('HINCRBY', key, 'cache_write', cache_write)
  redis.call('HINCRBY', key, 'tokens', tokens)
  redis.call('HINCRBYFLOAT', key, 'cost', cost)
  if sent then
    redis.call('HINCRBY', key, 'requests', 1)
  end
  if ARGV[10] == '1' then
    redis.call('HINCRBY', key, 'unpriced_requests', 1)
  end
end
add(KEYS[1])
add(KEYS[2])
-- (0 - x, not -x: Lua's -0 reaches Redis as "-0", which HINCRBY refuses.)
redis.call('HINCRBYFLOAT', KEYS[2], 'reserved_cost', 0 - reserved_cost)
redis.call('HINCRBY', KEYS[2], 'reserved_tokens', 0 - reserved_tokens)
if ARGV[8] ~= '' then
  local m = ARGV[8] .. '|'
  redis.call('HINCRBY', KEYS[2], m .. 'input', input)
  redis.call('HINCRBY', KEYS[2], m .. 'output', output)
  redis.call('HINCRBY', KEYS[2], m .. 'cache_read', cache_read)
  redis.call('HINCRBY', KEYS[2], m .. 'cache_write', cache_write)
  redis.call('HINCRBYFLOAT', KEYS[2], m .. 'cost', cost)
  if sent then
    redis.call('HINCRBY', KEYS[2], m .. 'requests', 1)
  end
end
if a[1] and a[1] ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[3], 'cost', cost)
  redis.call('HINCRBYFLOAT', KEYS[3], 'reserved_cost', 0 - reserved_cost)
end
if a[2] and a[2] ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[4], 'cost', cost)
  redis.call('HINCRBYFLOAT', KEYS[4], 'reserved_cost', 0 - reserved_cost)
end
return 1
