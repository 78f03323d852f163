-- Make every worker wait at least ARGV[1] ms before sending with one credential. The
-- wait is the key's TTL, so workers on different hosts need no common clock; a shorter
-- wait never cuts a longer one short (one worker's Retry-After: 60 stands).
-- KEYS  the throttle key of the credential
-- ARGV  the wait in ms, the reason (the key's value, for people reading Redis)
local left = redis.call('PTTL', KEYS[1])
local wanted = tonumber(ARGV[1])
if left < wanted then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', wanted)
  return wanted
end
return left
