-- Reads a session's history window after a cursor, with what is needed to tell a complete
-- answer from a truncated one.
-- KEYS[1] history stream   ARGV[1] exclusive start id ('(<offset>-1') or '-'   ARGV[2] COUNT
-- Returns { last-generated-id, max-deleted-entry-id, entries } or { '', '', {} } if absent.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return { '', '', {} }
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, deleted = '', ''
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
return { last, deleted, redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2]) }
