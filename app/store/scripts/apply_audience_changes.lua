-- Apply audience membership changes to the people of one queue shard, and queue an entry
-- for each person whose membership changed. All in one script per shard: a person's
-- state and their queue entry are written together, so no crash can leave one without
-- the other.
--
-- Each person's state is a hash: audience id -> "<changed at ms>|<1 member, 0 not>|<name>".
-- A change is applied only when it is newer than the last one applied for that (person,
-- audience): a late or repeated change (a Firehose retry, records out of order) can
-- never undo a newer one. At the same time, a change the other way is applied (the
-- later record wins): mParticle sends "left" then "joined" with one timestamp when a
-- person's identity changes. Every check of a person comes before their writes.
--
-- KEYS  the queue stream, then each person's state hash
-- ARGV  the state's TTL in seconds, then per person: their change count, their queue
--       entry's body, then per change: audience id, changed at (ms), "1" or "0", name
-- Returns per person: the queue entry id or "", then one letter per change: "a" applied,
--         "o" older than (or the same as) the one applied already
local queue = KEYS[1]
local ttl = tonumber(ARGV[1])
local a = 2
local results = {}
for p = 2, #KEYS do
  local state = KEYS[p]
  local count, body = tonumber(ARGV[a]), ARGV[a + 1]
  a = a + 2
  local letters, writes = {}, {}
  for c = 1, count do
    local audience, at_text, member, name = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
    local at = tonumber(at_text)
    a = a + 4
    local last_at, last_member = -1, nil
    local last = redis.call('HGET', state, audience)
    if last then
      local last_text
      last_text, last_member = string.match(last, '^(%d+)|(%d)')
      last_at = tonumber(last_text) or -1
    end
    -- A change queued earlier in this very delivery counts as applied already.
    local pending = writes[audience]
    if pending then
      last_at, last_member = pending[1], pending[3]
    end
    if at > last_at or (at == last_at and member ~= last_member) then
      writes[audience] = {at, at_text .. '|' .. member .. '|' .. name, member}
      letters[c] = 'a'
    else
      letters[c] = 'o'
    end
  end
  local entry = ''
  if next(writes) then
    entry = redis.call('XADD', queue, '*', 'b', body)
    for audience, write in pairs(writes) do
      redis.call('HSET', state, audience, write[2])
    end
    redis.call('EXPIRE', state, ttl)
  end
  results[#results + 1] = entry
  results[#results + 1] = table.concat(letters)
end
return results
