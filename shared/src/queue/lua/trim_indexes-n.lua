-- trim_indexes: take jobs whose records have expired out of the listing indexes, a
-- bounded number per call (queue/index.rs calls it from every worker's reclaim tick).
-- Ended jobs are noted in `ix:ended` ("<id><TAB><ix>" -> when it ended, _index.lua); the
-- caller reads the entries older than the result TTL and passes them here with every
-- key they name, so this script builds no key names.
--
-- KEYS[1..n] the record `job:<id>` of each entry, in ARGV order; then the membership
-- indexes the entries name (`ix:agent:<name>`, `ix:batch:<id>`; ARGV[3] of them, each
-- once); then the index tail (_index.lua).
--
-- ARGV[1] prefix, ARGV[2] result TTL (ms), ARGV[3] how many membership index keys,
-- then the `ix:ended` entries, as read.
--
-- An entry that is no longer due (by Redis' clock) is left alone; one whose record
-- still exists (a queued job cancelled: its record's TTL started only when fetch
-- dropped its ID) is looked at again one result TTL later.
--
-- Returns the number of jobs taken out of the indexes.
local prefix = ARGV[1]
local now, now_s = redis_now()
local cutoff = now - tonumber(ARGV[2])
local member_ix = {}
for k = IXT - tonumber(ARGV[3]) + 1, IXT do
  member_ix[string.sub(KEYS[k], #prefix + 4)] = KEYS[k]
end
local gone = {}
for j = 4, #ARGV do
  local entry = ARGV[j]
  local at = tonumber(redis.call('ZSCORE', IX_ENDED, entry))
  if at and at <= cutoff then
    local id = string.match(entry, '^[^\t]*')
    if redis.call('EXISTS', KEYS[j - 3]) == 1 then
      redis.call('ZADD', IX_ENDED, now_s, entry)
    else
      gone[#gone + 1] = id
      for suffix in string.gmatch(string.sub(entry, #id + 2), '[^\t]+') do
        if member_ix[suffix] then
          ix_push(ix_rem, member_ix[suffix], id)
        end
      end
      redis.call('ZREM', IX_ENDED, entry)
    end
  end
end
if #gone > 0 then
  -- an ended job is in one of these; which one its record would have said
  for _, status in ipairs({ 'succeeded', 'failed', 'cancelled' }) do
    ix_rem[IX[status]] = gone
  end
end
ix_flush(now, now_s)
return #gone
