-- claim: the first step of a fetch. It takes up to ARGV[2] ready job IDs off `wait`
-- and holds them for this fetch: each is put in `active` with a lease expiry (its
-- record is not touched: it stays `queued`) and the fetch record notes them. The
-- caller then reads what it needs to name every key of those jobs (their records'
-- `batch` and `cache`), and `lease` (the last step) leases them with every key
-- declared (docs/ARCHITECTURE.md, "Keys and Redis Cluster"). This step touches no
-- job record: the IDs it pops cannot be known before it runs.
--
-- Nothing is lost by a crash after this step: a claimed job is in `active` with an
-- expiry like any lease, and reclaim puts a claimed job that was never leased (still
-- `queued`) back at the front of `wait` (reclaim_expired-n.lua).
--
-- KEYS[1] wait     LIST  ready job IDs (LPUSH in, RPOP out)
-- KEYS[2] active   ZSET  job ID -> lease expiry (ms)
-- KEYS[3] delayed  ZSET  job ID -> run_at (ms): read for the clock line only
-- KEYS[4] marker   ZSET  wakes a blocked worker
-- KEYS[5] fetch    STRING `fetch:<worker>:<fetch ID>`: what this fetch claimed, then
--                  leased: JSON [token ('' until `lease` leased), leased IDs, claimed IDs
--                  not leased yet]
--
-- ARGV[1] lease TTL (ms), ARGV[2] max jobs
--
-- Idempotent: the same fetch ID again (its reply was lost) pops nothing and returns the
-- IDs the fetch record holds: those leased and those still claimed.
--
-- Returns { clock, id_1, id_2, ... }: clock is "<now><TAB><next_due>" as `lease`
-- returns it (lease-n.lua).
local now, now_s = redis_now()
local fk = KEYS[5]
local out = { '' }

local prior = redis.call('GET', fk)
if prior then
  local rec = cjson.decode(prior)
  for _, part in ipairs({ rec[2], rec[3] }) do
    for _, id in ipairs(part) do
      out[#out + 1] = id
    end
  end
else
  local ids = redis.call('RPOP', KEYS[1], ARGV[2])
  if ids then
    local until_s = string.format('%d', now + tonumber(ARGV[1]))
    for _, id in ipairs(ids) do
      out[#out + 1] = id
    end
    zadd_all(KEYS[2], ids, until_s)
    redis.call('SET', fk, cjson.encode({ '', {}, ids }), 'PX', ARGV[1])
    if #ids == tonumber(ARGV[2]) and redis.call('LLEN', KEYS[1]) > 0 then
      -- more work left: wake another idle worker
      redis.call('ZADD', KEYS[4], '0', '0')
    end
  end
end
local head = redis.call('ZRANGE', KEYS[3], '0', '0', 'WITHSCORES')
out[1] = now_s .. '\t' .. (head[2] or '')
return out
