-- Replaces a session's history window with one rebuilt from the log (a replay drill's
-- rebuild), atomically, while the relay keeps appending.
-- KEYS[1] the live window   KEYS[2] the rebuilt window (same hash tag, staged by the drill)
-- ARGV[1] the last offset of the session's partition the drill read: live entries after it
--         were relayed during the rebuild and are moved over, unchanged
-- ARGV[2] idle TTL in seconds   ARGV[3] MAXLEN (approximate)
-- ARGV[4] the offset of the session's record before the rebuilt window's first entry ('' for
--         none): recorded as trimmed, like entries a window drops as it grows
-- Returns the number of live entries moved over, or -1 when nothing was staged and the live
-- window held nothing after ARGV[1] (the window is then deleted: the log has no record of it).
local moved = 0
local live = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-1', '+')
if redis.call('EXISTS', KEYS[2]) == 0 and #live == 0 then
  redis.call('DEL', KEYS[1])
  return -1
end
for _, entry in ipairs(live) do
  local ok = pcall(redis.call, 'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], entry[1], unpack(entry[2]))
  if ok then
    moved = moved + 1
  end
end
if ARGV[4] ~= '' then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #last > 0 then
    pcall(redis.call, 'XSETID', KEYS[2], last[1][1], 'MAXDELETEDID', ARGV[4] .. '-1')
  end
end
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return moved
