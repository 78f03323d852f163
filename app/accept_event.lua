-- Accept one Customer.io event: dedup on event_id, first occurrence per delivery and
-- event type, queue append. All or nothing, in one round trip: a mark is never written
-- without its queue entry (and the reverse), whatever crashes when.
--
-- A script that fails half-way keeps the writes it already made (Redis has no rollback),
-- so every check comes before the first write, and the XADD, the one write that can
-- still fail (a queue key of the wrong type), comes before the others. Every other
-- write goes to a key whose type a check above has already read.
--
-- KEYS[1]  event mark        hash  s=status t=type q=queue entry (its id holds the time
--                                  received; the entry, the delivery) n=copies received
--                                  after the first; when suppressed: by=the first event,
--                                  r=received_ms, d=delivery. Every byte here is kept
--                                  8 days per event: nothing is stored twice.
-- KEYS[2]  first-occurrence  hash  event type -> event_id that was forwarded
-- KEYS[3]  queue             stream
-- ARGV     event_id, event_type, body field ("z" packed, "b" plain), body, received_ms,
--          event_ttl, first_ttl, check_first ("1" or "0"), delivery_id ("" when none)
local mark, first, queue = KEYS[1], KEYS[2], KEYS[3]
local event_id, event_type, body_field, body = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local received_ms, event_ttl, first_ttl = ARGV[5], ARGV[6], ARGV[7]
local check_first, delivery_id = ARGV[8], ARGV[9]

-- Checks: read only. A mark that only tells the story of a copy that was not accepted
-- (ignored while its type was off, quarantined) does not make this copy a duplicate.
local status = redis.call('HGET', mark, 's')
local stale = status == 'ignored' or status == 'quarantined'
if status and not stale then
  -- Counting the copies is the one write on this path; the mark's type is a hash here.
  redis.call('HINCRBY', mark, 'n', 1)
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
  if stale then
    redis.call('DEL', mark)
  end
  redis.call('HSET', mark, 't', event_type, ...)
  redis.call('EXPIRE', mark, event_ttl)
end

if earlier then
  remember('s', 'suppressed', 'by', earlier, 'r', received_ms, 'd', delivery_id)
  return {'suppressed', earlier}
end

local entry = redis.call('XADD', queue, '*', body_field, body)
if check_first == '1' then
  redis.call('HSET', first, event_type, event_id)
  redis.call('EXPIRE', first, first_ttl)
end
remember('s', 'queued', 'q', entry)
return {'queued', entry}
