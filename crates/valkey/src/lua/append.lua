-- Appends one log event to its session's history window and announces it, atomically.
-- KEYS[1] history stream   ARGV[1] Kafka offset   ARGV[2] CloudEvents JSON
-- ARGV[3] MAXLEN (approximate)   ARGV[4] channel   ARGV[5] idle TTL in seconds
-- Returns 1 when appended and published, 0 when this offset was already written (replay).
local id = ARGV[1] .. '-1'
local ok, err = pcall(redis.call, 'XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], id, 'e', ARGV[2])
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
