-- Forget consumers of a queue's group that hold no pending entry: the one named in
-- ARGV[3] whatever its idle time (a worker leaving with nothing in hand), or, when ARGV[3]
-- is empty, every one idle for ARGV[2] ms or more (workers that died, whose entries
-- others have taken over). One whose pending count is not 0 is never touched: deleting
-- a consumer drops its pending entries from the group, and they would never be read
-- again. Atomic, so none can read an entry between the check and the delete; a live
-- worker that is forgotten while idle is recreated by its next XREADGROUP.
-- KEYS  the queue stream
-- ARGV  the group, the idle time in ms, a consumer's name or ""
local forgotten = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  local chosen
  if ARGV[3] ~= '' then
    chosen = info['name'] == ARGV[3]
  else
    chosen = info['idle'] >= tonumber(ARGV[2])
  end
  if chosen and info['pending'] == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    forgotten = forgotten + 1
  end
end
return forgotten
