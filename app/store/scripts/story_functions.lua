-- Shared by the scripts that write stories (app/store/marks.py): the loader puts this
-- file before every script that starts with `-- uses: story_functions`.
local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'
local STATUSES = {q = 'queued', r = 'relayed', d = 'dead_lettered', s = 'suppressed',
                  i = 'ignored', x = 'quarantined'}

local function base36(n)
  if n < 0 then
    return '-' .. base36(-n)
  end
  local text = ''
  repeat
    local digit = n % 36
    text = string.sub(DIGITS, digit + 1, digit + 1) .. text
    n = math.floor((n - digit) / 36)
  until n == 0
  return text
end

-- A queue entry id as a relayed or dead-lettered story keeps it: "1795704496123-0" ->
-- "mwxo3cvv-0".
local function packed_entry(entry_id)
  local ms, sequence = string.match(entry_id, '^(%d+)-(%d+)$')
  if not ms then
    return '0-0'  -- not a stream id: nothing to tell the time received by
  end
  return base36(tonumber(ms)) .. '-' .. sequence
end

local function with_one_more_copy(story)
  local status, copies, rest = string.match(story, '^(%a)(%d*)(.*)$')
  return status .. ((tonumber(copies) or 0) + 1) .. rest
end

-- A write the answer does not depend on (counting a copy, a suppressed event's own
-- mark): a full Redis (maxmemory, noeviction) refuses it with OOM, and the copy is
-- still answered. Any other error stops the script as redis.call would.
local function best_effort(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, '^OOM') then
      return nil
    end
    return redis.error_reply(reply.err)
  end
  return reply
end
