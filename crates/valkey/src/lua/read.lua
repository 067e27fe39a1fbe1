-- Reads a session's history window after a cursor, with what is needed to tell a complete
-- answer from a truncated one.
-- KEYS[1] history stream   ARGV[1] exclusive start id ('(<offset>-1') or '-'   ARGV[2] COUNT
-- ARGV[3] byte budget: entries stop once their events would exceed it (the first entry is
-- always returned, however large, so a reader always makes progress).
-- Returns { last-generated-id, max-deleted-entry-id, entries, more } or { '', '', {}, 0 } if
-- absent; more is 1 when the read stopped at COUNT or at the budget (more entries may follow).
--
-- Entries are read a few at a time so that neither the reply nor the script's own memory
-- holds more than the budget (plus one batch) of events of up to ~1 MiB each.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return { '', '', {}, 0 }
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, deleted = '', ''
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
local start, count, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local entries, bytes, more = {}, 0, 0
while #entries < count and more == 0 do
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(8, count - #entries))
  if #batch == 0 then break end
  for _, entry in ipairs(batch) do
    -- Fields are 'e' <event json> 'p' <previous offset>: the event is what costs.
    local size = #(entry[2][2] or '')
    if #entries > 0 and bytes + size > budget then
      more = 1
      break
    end
    entries[#entries + 1] = entry
    bytes = bytes + size
  end
  start = '(' .. batch[#batch][1]
end
if #entries >= count then more = 1 end
return { last, deleted, entries, more }
