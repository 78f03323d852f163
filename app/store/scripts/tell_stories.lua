-- uses: story_functions
-- Tell the story of events the worker is done with (relayed, or dead-lettered), all of
-- one queue shard (one Cluster slot). Only marks that exist are rewritten, where they
-- are, so a relayed event whose mark has expired (or was forgotten) leaves nothing
-- behind, and the idempotency window is not restarted. The copies counted, the type and
-- the queue entry (hence the time received) stay as the mark had them.
-- KEYS  per event, the buckets that may hold its mark, newest first
-- ARGV  now (ms), the new status letter ("r" or "d"), then per event: event_id, how many
--       of KEYS are its buckets, its type and queue entry id (for a mark that has neither,
--       e.g. a quarantined copy's), the end of its story.
local now_ms, status = tonumber(ARGV[1]), ARGV[2]
local key = 1
for a = 3, #ARGV, 5 do
  local event_id, count = ARGV[a], tonumber(ARGV[a + 1])
  for i = key, key + count - 1 do
    local story = redis.call('HGET', KEYS[i], event_id)
    if story then
      local code, copies = string.match(story, '^(%a)(%d*)')
      local event_type, entry = ARGV[a + 2], ARGV[a + 3]
      local told = code == 'r' or code == 'd'  -- its entry id is packed already
      if told or code == 'q' then
        event_type, entry = string.match(story, '^%a%d*|([^|]*)|([^|]*)')
      end
      if not told then
        entry = packed_entry(entry)
      end
      local received = tonumber(string.match(entry, '^[^-]+'), 36)
      redis.call('HSET', KEYS[i], event_id, status .. copies .. '|' .. event_type .. '|'
                 .. entry .. '|' .. base36(now_ms - received) .. '|' .. ARGV[a + 4])
      break
    end
  end
  key = key + count
end
return 0
