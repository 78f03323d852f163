-- Accept one Customer.io event: dedup on event_id, first occurrence per delivery and
-- event type, queue append. All or nothing, in one round trip: a mark is never written
-- without its queue entry (and the reverse), whatever crashes when.
--
-- A script that fails half-way keeps the writes it already made (Redis has no rollback),
-- so every check comes before the first write, and the XADD, the one write that can
-- still fail (a queue key of the wrong type), comes before the others. Every other
-- write goes to a key whose type a check above has already read.
--
-- KEYS[1]  event mark        hash  s=status t=type r=received_ms q=queue entry d=delivery by=suppressor
-- KEYS[2]  first-occurrence  hash  event type -> event_id that was forwarded
-- KEYS[3]  queue             stream
-- ARGV     event_id, event_type, body, received_ms, event_ttl, first_ttl,
--          check_first ("1" or "0"), delivery_id ("" when none)
local mark, first, queue = KEYS[1], KEYS[2], KEYS[3]
local event_id, event_type, body, received_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local event_ttl, first_ttl, check_first, delivery_id = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

-- Checks: read only.
local status = redis.call('HGET', mark, 's')
if status then
  if status == 'suppressed' then
    return {'suppressed', redis.call('HGET', mark, 'by') or ''}
  end
  return {'duplicate', status}
end

-- A flag naming this very event is no earlier occurrence: its mark was forgotten
-- (cio-relay dedup forget), and this copy is to be queued again.
local earlier = false
if check_first == '1' then
  earlier = redis.call('HGET', first, event_type)
  if earlier == event_id then
    earlier = false
  end
end

-- Writes.
local function remember(...)
  redis.call('HSET', mark, 't', event_type, 'r', received_ms, ...)
  if delivery_id ~= '' then
    redis.call('HSET', mark, 'd', delivery_id)
  end
  redis.call('EXPIRE', mark, event_ttl)
end

if earlier then
  remember('s', 'suppressed', 'by', earlier)
  return {'suppressed', earlier}
end

local entry = redis.call('XADD', queue, '*', 'b', body)
if check_first == '1' then
  redis.call('HSET', first, event_type, event_id)
  redis.call('EXPIRE', first, first_ttl)
end
remember('s', 'queued', 'q', entry)
return {'queued', entry}
