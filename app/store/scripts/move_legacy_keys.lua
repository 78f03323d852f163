-- uses: story_functions
-- Move one key's fields (a mark or flags kept in a key of their own, before buckets)
-- into the present generation's bucket (by Redis's clock), each unless a bucket the
-- relay may read already has it; then delete the key.
-- KEYS  the old key, then the buckets that may hold the fields (oldest first, the first
--       of generation ARGV[1])
-- ARGV  that generation, span, TTL, then field and value pairs
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local oldest, span, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local generation = math.floor(tonumber(redis.call('TIME')[1]) / span)
local bucket = KEYS[2 + generation - oldest]
if generation < oldest or not bucket then
  return redis.error_reply('ERR this process and Redis disagree on the time')
end
local moved = 0
for a = 4, #ARGV, 2 do
  local present = false
  for i = 2, #KEYS do
    if redis.call('HEXISTS', KEYS[i], ARGV[a]) == 1 then
      present = true
    end
  end
  if not present then
    redis.call('HSET', bucket, ARGV[a], ARGV[a + 1])
    moved = moved + 1
  end
end
if redis.call('TTL', bucket) < 0 then
  redis.call('EXPIREAT', bucket, (generation + 1) * span + ttl)
end
redis.call('DEL', KEYS[1])
return moved
