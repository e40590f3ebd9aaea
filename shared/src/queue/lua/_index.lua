-- Listing indexes and history counters, prepended after _results.lua to every queue
-- script (scripts.rs); the Rust side is queue/index.rs.
--
-- The index tail. Every script that changes a job's status declares the same nine keys
-- LAST in KEYS, after the keys its header lists (its file name counts only those):
--   ix:queued ix:retrying ix:succeeded ix:failed ix:dead ix:cancelled
--                  ZSETs, one per status: the IDs of the jobs in it, all scored 0, so
--                  ordered by ID (UUID v7: creation time) and paged with ZRANGEBYLEX.
--                  `running` has none: its jobs are the members of `active` (the
--                  leases), a set as small as the fleet's concurrency, which the
--                  listing reads whole (listing.rs); a second ZSET would cost every
--                  fetch a ZADD and every settle a ZREM for nothing.
--   ix:ended       ZSET "<id><TAB><ix>" -> when the job ended (ms): what the index trim
--                  (trim_indexes-n.lua) removes once the job's record has expired
--   hist:cur       HASH the current minute's counters (`minute` = its start, ms)
--   hist:log       ZSET one member per earlier minute, "<minute> field=n ...", scored
--                  by the minute; trimmed past HIST_KEEP_MS
-- A job's `ix` field (written at enqueue) names its membership indexes, tab-separated
-- suffixes of `ix:` such as `agent:dexter` and `batch:<id>`; enqueue adds the job to
-- them (declared keys), the trim takes it out.
--
-- Index changes are gathered over one call and written at its end (ix_flush): adds
-- before removes, which is right because within one call a job only ever passes
-- through a status (retrying -> queued -> running in one fetch), never comes back to it.
local IXT = #KEYS - 9
-- `queue.listing_indexes = false`: the caller passes `ix:off` in place of each of the
-- seven index keys (queue/keys.rs), and the scripts keep no index, only the history.
local IX_ON = KEYS[IXT + 1] ~= KEYS[IXT + 2]
local IX = {}
local IX_ENDED = nil
if IX_ON then
  IX = {
    queued = KEYS[IXT + 1], retrying = KEYS[IXT + 2], succeeded = KEYS[IXT + 3],
    failed = KEYS[IXT + 4], dead = KEYS[IXT + 5], cancelled = KEYS[IXT + 6],
  }
  IX_ENDED = KEYS[IXT + 7]
end
local HIST_CUR, HIST_LOG = KEYS[IXT + 8], KEYS[IXT + 9]
-- history kept: 8 days of minutes (the charts need 7)
local HIST_KEEP_MS = 8 * 24 * 3600 * 1000
-- members per ZADD/ZREM call (Lua's unpack has a stack limit)
local IX_CHUNK = 500
local ix_add, ix_rem, ix_end, hist = {}, {}, {}, {}

-- The list of members gathered for index `key` in table `t` (made on first use).
local function ix_list(t, key)
  local l = t[key]
  if not l then
    l = {}
    t[key] = l
  end
  return l
end

local function ix_push(t, key, v)
  local l = ix_list(t, key)
  l[#l + 1] = v
end

-- Job `id` leaves the index of status `old` (nil: none) for that of `new` (nil: none);
-- `running` has no index here (its jobs are `active`'s members), so a move to or from
-- it touches one index only.
local function ix_move(id, old, new)
  if old == new then
    return
  end
  if old and IX[old] then
    ix_push(ix_rem, IX[old], id)
  end
  if new and IX[new] then
    ix_push(ix_add, IX[new], id)
  end
end

-- Job `id` ended (succeeded, failed, cancelled): its record expires after the result
-- TTL `ttl` (ms; none when 0), and then the trim takes it out of the indexes.
local function ix_ended(id, ix_field, ttl)
  if IX_ENDED and ttl and ttl > 0 then
    ix_end[#ix_end + 1] = id .. '\t' .. (ix_field or '')
  end
end

-- Count `n` events of kind `field` in this minute's history.
local function hist_add(field, n)
  hist[field] = (hist[field] or 0) + n
end

local function zadd_all(key, members, score)
  for i = 1, #members, IX_CHUNK do
    local args = {}
    for j = i, math.min(i + IX_CHUNK - 1, #members) do
      args[#args + 1] = score
      args[#args + 1] = members[j]
    end
    redis.call('ZADD', key, unpack(args))
  end
end

local function zrem_all(key, members)
  for i = 1, #members, IX_CHUNK do
    redis.call('ZREM', key, unpack(members, i, math.min(i + IX_CHUNK - 1, #members)))
  end
end

-- Add the counts gathered to the current minute; a new minute first rolls the old
-- one into the log (and trims the log), so memory stays bounded.
local function hist_flush(now)
  if next(hist) == nil then
    return
  end
  local minute = now - now % 60000
  local minute_s = string.format('%d', minute)
  local cur = redis.call('HGET', HIST_CUR, 'minute')
  if cur ~= minute_s then
    if cur then
      local row = redis.call('HGETALL', HIST_CUR)
      local parts = { cur }
      for i = 1, #row, 2 do
        if row[i] ~= 'minute' then
          parts[#parts + 1] = row[i] .. '=' .. row[i + 1]
        end
      end
      redis.call('ZADD', HIST_LOG, cur, table.concat(parts, ' '))
      redis.call('ZREMRANGEBYSCORE', HIST_LOG, '-inf',
        '(' .. string.format('%d', minute - HIST_KEEP_MS))
      redis.call('DEL', HIST_CUR)
    end
    redis.call('HSET', HIST_CUR, 'minute', minute_s)
  end
  for field, n in pairs(hist) do
    if n ~= 0 then
      redis.call('HINCRBY', HIST_CUR, field, string.format('%d', n))
    end
  end
end

-- Write what the call gathered: index adds, then removes, ended jobs, history.
-- `now` is Redis' clock (ms) as a number, `now_s` the same as a string.
local function ix_flush(now, now_s)
  if not IX_ON then
    hist_flush(now)
    return
  end
  for key, ids in pairs(ix_add) do
    zadd_all(key, ids, '0')
  end
  for key, ids in pairs(ix_rem) do
    zrem_all(key, ids)
  end
  if #ix_end > 0 then
    zadd_all(IX_ENDED, ix_end, now_s)
  end
  hist_flush(now)
end
