-- Count one wrong admin token from one client address, in one step for every web
-- process. The first failure starts the window: later ones never extend it, so a client
-- gets a fresh allowance once the window has passed, however hard it kept trying.
-- KEYS  the client's failure counter
-- ARGV  the window in ms
-- Returns {failures in this window, ms left in it}.
local failures = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {failures, redis.call('PTTL', KEYS[1])}
