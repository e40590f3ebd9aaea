-- reserve: admit one request of an attempt, or refuse it. Admitted, its estimated
-- input is reserved against every budget it answers to (job, batch, tenant per day),
-- so requests sent at the same time cannot all pass a cap: a cap is overshot by at most
-- the output of the requests already in flight. `settle` replaces the reservation with
-- what the request really used.
--
-- KEYS[1] attempt    HASH  the token's record (see issue-2.lua)
-- KEYS[2] job        HASH  the queue's job record (status, fencing token)
-- KEYS[3] job_spend  HASH  the job's spend (cost, tokens, reserved_cost, reserved_tokens)
-- KEYS[4] batch      HASH  the batch's spend (unused when the job has no batch)
-- KEYS[5] tenant_day HASH  the tenant's spend today (unused when the job has no tenant)
--
-- ARGV[1] reserve_cost (USD), ARGV[2] reserve_tokens, ARGV[3] batch/tenant TTL (s)
--
-- Returns {'ok', profile} or {'unknown'|'ended'|'lease_lost'|'budget', why}.
local a = redis.call('HMGET', KEYS[1], 'state', 'fence', 'profile', 'max_cost', 'max_tokens',
  'batch', 'tenant', 'batch_cap', 'tenant_cap', 'budget_reason')
if not a[1] then
  return { 'unknown', 'no such token' }
end
if a[1] == 'budget' then
  return { 'budget', a[10] or 'budget exceeded' }
end
if a[1] ~= 'live' then
  return { 'ended', 'the attempt has ended' }
end
local j = redis.call('HMGET', KEYS[2], 'status', 'token')
if j[1] ~= 'running' or j[2] ~= a[2] then
  redis.call('HSET', KEYS[1], 'state', 'ended')
  return { 'lease_lost', 'the attempt no longer holds its job' }
end
local reserve_cost = tonumber(ARGV[1])
local reserve_tokens = tonumber(ARGV[2])
local function refuse(why)
  redis.call('HSET', KEYS[1], 'state', 'budget', 'budget_reason', why)
  return { 'budget', why }
end
local s = redis.call('HMGET', KEYS[3], 'cost', 'reserved_cost', 'tokens', 'reserved_tokens')
local max_cost = num(a[4])
if max_cost > 0 and num(s[1]) + num(s[2]) + reserve_cost > max_cost then
  return refuse(string.format('the job spent $%.6f of its $%.6f budget', num(s[1]), max_cost))
end
local max_tokens = num(a[5])
if max_tokens > 0 and num(s[3]) + num(s[4]) + reserve_tokens > max_tokens then
  return refuse(string.format('the job used %d of its %d tokens', num(s[3]), max_tokens))
end
local has_batch = a[6] and a[6] ~= ''
local has_tenant = a[7] and a[7] ~= ''
if has_batch and num(a[8]) > 0 then
  local b = redis.call('HMGET', KEYS[4], 'cost', 'reserved_cost')
  if num(b[1]) + num(b[2]) + reserve_cost > num(a[8]) then
    return refuse(string.format('the batch spent $%.6f of its $%.6f budget', num(b[1]), num(a[8])))
  end
end
if has_tenant and num(a[9]) > 0 then
  local t = redis.call('HMGET', KEYS[5], 'cost', 'reserved_cost')
  if num(t[1]) + num(t[2]) + reserve_cost > num(a[9]) then
    return refuse(string.format('the tenant spent $%.6f of its $%.6f daily budget', num(t[1]), num(a[9])))
  end
end
redis.call('HINCRBY', KEYS[1], 'inflight', 1)
redis.call('HINCRBYFLOAT', KEYS[3], 'reserved_cost', reserve_cost)
redis.call('HINCRBY', KEYS[3], 'reserved_tokens', reserve_tokens)
if has_batch then
  redis.call('HINCRBYFLOAT', KEYS[4], 'reserved_cost', reserve_cost)
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[3]))
end
if has_tenant then
  redis.call('HINCRBYFLOAT', KEYS[5], 'reserved_cost', reserve_cost)
  redis.call('EXPIRE', KEYS[5], tonumber(ARGV[3]))
end
return { 'ok', a[3] or '' }
