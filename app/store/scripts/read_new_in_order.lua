-- A shard's new entries, unless another worker has some of its entries in flight.
-- A person's events all sit in one queue shard. New entries of a shard are read only
-- while no other worker has entries of it in flight (pending), checked and read in one
-- script so two workers cannot both pass the check: each person's events then reach the
-- destination in the order they were accepted, however many workers share the group. A
-- dead worker's pending entries hold its shards until another takes them over
-- (claim_idle_seconds); that one sends them before anything newer.
-- KEYS  the queue stream
-- ARGV  the group, this consumer, how many entries at most
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
if summary[1] > 0 then
  for _, row in ipairs(summary[4]) do
    if row[1] ~= ARGV[2] then
      return false
    end
  end
end
return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                  'STREAMS', KEYS[1], '>')
