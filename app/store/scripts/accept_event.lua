-- uses: story_functions
-- Accept one Customer.io event: dedup on event_id, first occurrence per delivery and
-- event type, queue append. All or nothing, in one round trip: a mark is never written
-- without its queue entry (and the reverse), whatever crashes when.
--
-- A script that fails half-way keeps the writes it already made (Redis has no rollback),
-- so every check comes before the first write, and the XADD, the one write that can
-- still fail (a queue key of the wrong type), comes before the others. Every other
-- write goes to a key whose type a check above has already read.
--
-- Marks and flags are fields of bucket hashes, one bucket per generation (app/store/keys.py).
-- The caller passes every bucket that may hold this event's mark or its delivery's
-- flag by its own clock (a missing one costs next to nothing to read); Redis's clock
-- picks the one written to, the present generation's, so a bucket's
-- expiry, the end of its generation + the TTL, holds for every field in it whichever
-- web process wrote it. A bucket gets that expiry when its first field is written.
--
-- KEYS     the queue stream; the event's mark buckets (ARGV[6] of them, oldest first,
--          the first of generation ARGV[7]); its delivery's first-occurrence buckets
--          (the rest, oldest first, the first of generation ARGV[10]; none when the
--          event names no delivery)
--            mark bucket   hash  event_id -> packed story (app/store/marks.py)
--            first bucket  hash  "<delivery_id>:<event type>" -> event_id forwarded
-- ARGV     event_id, event type (escaped), body field ("d" packed, "b" plain), body,
--          received_ms, mark bucket count, oldest mark generation, mark span, event_ttl,
--          oldest first generation, first span, first_ttl, check_first ("1" or "0"),
--          first-occurrence field, delivery_id (escaped; "" when none), the error for
--          a caller whose clock is too far from Redis's to have passed its bucket
local queue = KEYS[1]
local event_id, event_type, body_field, body = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local last_mark = 1 + tonumber(ARGV[6])
local check_first = ARGV[13] == '1'
local first_field = ARGV[14]

-- The delivery's flag for this type, read in every bucket (so the one that may be
-- written has been read); false when there is none.
local function first_occurrence()
  local found = false
  for i = last_mark + 1, #KEYS do
    local value = redis.call('HGET', KEYS[i], first_field)
    if value and not found then
      found = value
    end
  end
  return found
end

-- Checks: read only. A mark that only tells the story of a copy that was not accepted
-- (ignored while its type was off, quarantined) does not make this copy a duplicate.
-- Newest first: a copy's mark is nearly always in the present generation, and then the
-- older buckets need not be read (nothing is written to them).
local mark, story, status, stale = nil, nil, nil, false
for i = last_mark, 2, -1 do
  local value = redis.call('HGET', KEYS[i], event_id)
  if value and not story then
    mark, story, status = KEYS[i], value, string.sub(value, 1, 1)
    stale = status == 'i' or status == 'x'
    if not stale then
      break
    end
  end
end
if story and not stale then
  -- Counting the copies is the one write on this path, to a bucket read above.
  best_effort('HSET', mark, event_id, with_one_more_copy(story))
  if status == 's' then
    return {'suppressed', first_occurrence() or ''}
  end
  return {'duplicate', STATUSES[status] or status}
end

-- A flag naming this very event is no earlier occurrence: its mark was forgotten
-- (cio-relay dedup forget), and this copy is to be queued again.
local earlier = false
if check_first then
  earlier = first_occurrence()
  if earlier == event_id then
    earlier = false
  end
end

-- The buckets of Redis's present generation, among those passed (and so read above).
local now = tonumber(redis.call('TIME')[1])
local function present(first_key, last_key, oldest, span, ttl)
  local generation = math.floor(now / tonumber(span))
  local i = first_key + generation - tonumber(oldest)
  if i < first_key or i > last_key then
    return nil
  end
  return KEYS[i], (generation + 1) * tonumber(span) + tonumber(ttl)
end
local mark_bucket, mark_expiry = present(2, last_mark, ARGV[7], ARGV[8], ARGV[9])
local first_bucket, first_expiry
if check_first then
  first_bucket, first_expiry = present(last_mark + 1, #KEYS, ARGV[10], ARGV[11], ARGV[12])
end
if not mark_bucket or (check_first and not first_bucket) then
  return redis.error_reply('ERR ' .. ARGV[16])
end

-- Writes. A bucket's expiry is set with its first field (the same for every field).
local function put(bucket, field, value, expiry, write)
  if write('HSET', bucket, field, value) == 1 and redis.call('HLEN', bucket) == 1 then
    redis.call('EXPIREAT', bucket, expiry)
  end
end

local function remember(packed, write)
  if stale then
    redis.call('HDEL', mark, event_id)
  end
  put(mark_bucket, event_id, packed, mark_expiry, write)
end

if earlier then
  remember('s|' .. event_type .. '|' .. base36(tonumber(ARGV[5])) .. '|' .. ARGV[15],
           best_effort)
  return {'suppressed', earlier}
end

local entry = redis.call('XADD', queue, '*', body_field, body)
-- The XADD above was the script's first write: once a script has written, Redis lets
-- it finish its writes even when full, so the marks always go with the entry.
if check_first then
  put(first_bucket, first_field, event_id, first_expiry, redis.call)
end
remember('q|' .. event_type .. '|' .. entry, redis.call)
return {'queued', entry}
