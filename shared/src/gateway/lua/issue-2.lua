-- issue: record a new attempt token (by its hash) with what it is bound to and the
-- budgets it answers to; the job's spend record is kept as long as the job's result.
--
-- KEYS[1] attempt   HASH  the attempt's binding, state and spend (key: hash of the token)
-- KEYS[2] job_spend HASH  the job's spend over all its attempts
--
-- ARGV[1] attempt TTL (s), ARGV[2] job spend TTL (s), ARGV[3..] field, value pairs
-- (job, attempt, fence, job_key, profile, batch, tenant, max_cost, max_tokens,
-- batch_cap, tenant_cap).
--
-- Returns 1.
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'live', 'inflight', 0, unpack(fields))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('HSETNX', KEYS[2], 'cost', 0)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
return 1
