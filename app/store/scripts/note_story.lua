-- uses: story_functions
-- Write the story of an event that is not queued (ignored, quarantined): only when the
-- event has no mark yet, so a later copy never rewrites what happened to the first; a
-- copy after the first is counted.
-- KEYS  the event's mark buckets, oldest first (see accept_event.lua)
-- ARGV  event_id, oldest generation, span, event_ttl, packed story, the error for a
--       clock a generation away from Redis's
local event_id = ARGV[1]
for i = 1, #KEYS do
  local story = redis.call('HGET', KEYS[i], event_id)
  if story then
    redis.call('HSET', KEYS[i], event_id, with_one_more_copy(story))
    return 0
  end
end
local span = tonumber(ARGV[3])
local generation = math.floor(tonumber(redis.call('TIME')[1]) / span)
local bucket = KEYS[generation - tonumber(ARGV[2]) + 1]
if not bucket then
  return redis.error_reply('ERR ' .. ARGV[6])
end
redis.call('HSET', bucket, event_id, ARGV[5])
redis.call('EXPIREAT', bucket, (generation + 1) * span + tonumber(ARGV[4]))
return 1
