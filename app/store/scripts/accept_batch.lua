-- uses: story_functions
-- Accept one batch of events (mParticle's Webhook output): dedup each event on its
-- idempotency key, and the batch itself on its own key; append one queue entry holding
-- the batch with only its new events. All or nothing, in one round trip: a mark is never
-- written without its queue entry. Every check comes before the first write, and the
-- XADD, the first write, comes before the marks (once a script has written, Redis lets
-- it finish its writes even when full).
--
-- Marks are fields of bucket hashes per generation, as in accept_event.lua; a story
-- whose copy was not accepted (ignored, quarantined) does not make a copy a duplicate.
--
-- KEYS  the queue stream; then per item (each event, then the batch) the buckets that
--       may hold its mark, oldest first
-- ARGV  span, TTL, the entry's text before its events, after them, "1" when the batch
--       is to be sent without new events (attributes to set), the item count, the error
--       for a clock a generation away from Redis's; then per item: its key, its type
--       (escaped), its JSON ("" for the batch), its bucket count, its oldest generation
-- Returns {queue entry id or "", one letter per event ("q" queued, "d" duplicate), and
--          "d" when the batch itself was accepted before, else "q"}
local queue = KEYS[1]
local span, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local body_head, body_tail = ARGV[3], ARGV[4]
local send_without_events = ARGV[5] == '1'
local count = tonumber(ARGV[6])
local clock_error = ARGV[7]

local now = tonumber(redis.call('TIME')[1])
local generation = math.floor(now / span)
local items = {}
local a, k = 8, 2
for i = 1, count do
  local item = {key = ARGV[a], type = ARGV[a + 1], json = ARGV[a + 2]}
  local buckets, oldest = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  a = a + 5
  for j = k + buckets - 1, k, -1 do
    local story = redis.call('HGET', KEYS[j], item.key)
    if story then
      local status = string.sub(story, 1, 1)
      if status ~= 'i' and status ~= 'x' then
        item.mark, item.story = KEYS[j], story
        break
      end
    end
  end
  local present = k + generation - oldest
  if present < k or present > k + buckets - 1 then
    return redis.error_reply('ERR ' .. clock_error)
  end
  item.bucket = KEYS[present]
  k = k + buckets
  items[i] = item
end

local accepted, statuses = {}, {}
for i = 1, count - 1 do
  if items[i].story then
    statuses[i] = 'd'
  else
    statuses[i] = 'q'
    accepted[#accepted + 1] = items[i].json
  end
end
local batch = items[count]
if #accepted == 0 and not (send_without_events and not batch.story) then
  -- Nothing to send: count the copies, a write the answer does not depend on.
  for i = 1, count do
    if items[i].story then
      best_effort('HSET', items[i].mark, items[i].key, with_one_more_copy(items[i].story))
    end
  end
  return {'', table.concat(statuses), batch.story and 'd' or 'q'}
end

local entry = redis.call('XADD', queue, '*', 'b', body_head .. table.concat(accepted, ',')
                          .. body_tail)
local expiry = (generation + 1) * span + ttl
local function remember(item)
  local written = redis.call('HSET', item.bucket, item.key,
                             'q|' .. item.type .. '|' .. entry)
  if written == 1 and redis.call('HLEN', item.bucket) == 1 then
    redis.call('EXPIREAT', item.bucket, expiry)
  end
end
for i = 1, count - 1 do
  if statuses[i] == 'q' then
    remember(items[i])
  else
    best_effort('HSET', items[i].mark, items[i].key, with_one_more_copy(items[i].story))
  end
end
if batch.story then
  best_effort('HSET', batch.mark, batch.key, with_one_more_copy(batch.story))
else
  remember(batch)
end
return {entry, table.concat(statuses), batch.story and 'd' or 'q'}
