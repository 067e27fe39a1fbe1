-- Appends one log event to its session's history window and announces it, atomically.
-- KEYS[1] history stream   ARGV[1] Kafka offset   ARGV[2] CloudEvents JSON
-- ARGV[3] MAXLEN (approximate)   ARGV[4] channel   ARGV[5] idle TTL in seconds
-- Returns 1 when appended and published, 0 when this offset was already written (replay).
--
-- Each entry also records 'p', the offset of the entry before it in this window ('' when the
-- window starts here: a new session, or a window lost to an eviction or a Valkey restart).
-- Readers follow that chain to prove that no event of the session is missing between a
-- cursor and the window; where the chain is broken they read the gap from Kafka.
local id = ARGV[1] .. '-1'
local prev = ''
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  prev = string.match(last[1][1], '^(%d+)%-1$') or ''
end
local ok, err = pcall(redis.call, 'XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], id, 'e', ARGV[2], 'p', prev)
if not ok then
  local message = type(err) == 'table' and err.err or tostring(err)
  -- An id at or below the stream's top means a replayed offset: a no-op, not a second publish.
  if string.find(message, 'equal or smaller', 1, true) then
    return 0
  end
  return redis.error_reply(message)
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[1] .. '\n' .. ARGV[2])
return 1
