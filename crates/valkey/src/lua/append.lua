-- Appends one log event to its session's history window and announces it, atomically.
-- KEYS[1] history stream   KEYS[2] the relay's mark of its source partition (see keys.rs)
-- ARGV[1] Kafka offset   ARGV[2] CloudEvents JSON   ARGV[3] MAXLEN (approximate)
-- ARGV[4] channel   ARGV[5] idle TTL in seconds
-- ARGV[6] the offset of this partition the relay wrote last ('' when it knows none)
-- ARGV[7] the announcing command: PUBLISH, or SPUBLISH (sharded) on a cluster
-- ARGV[8] the announcement's metadata (`t=<traceparent> ts=<ms>`), '' for none: it follows
--         the offset on the announcement's first line and is not stored
-- Returns 1 when appended and published, 0 when this offset was already written (replay),
-- plus 2 when this append found that Valkey lost writes it had acknowledged, plus 4 when the
-- window already holds *another* record at this offset (or lacks it inside its range): the
-- log behind this Valkey was reset (topic deleted and re-created, offsets restarted), and the
-- window belongs to the old log. Nothing is written then; the relay reports it loudly.
--
-- Each entry also records 'p', the offset of the entry before it in this window ('' when the
-- window starts here: a new session, or a window lost to an eviction or a Valkey restart).
-- Readers follow that chain to prove that no event of the session is missing between a
-- cursor and the window; where the chain is broken they read the gap from Kafka.
--
-- A Valkey that comes back from a snapshot, or a lagging replica promoted, has lost appends
-- the relay already committed past: a window's top is then older than the session's previous
-- record in the log, and linking to it would hide the lost events. The partition's mark
-- ('through': the highest offset appended, 'floor': see below) is lost with them, so the relay's
-- own memory of what it wrote last ('expected') exposes the rollback. From then on no entry
-- links to a top below the floor (the offset where the rollback was found): those windows
-- read as broken chains, and readers fill them from the log.
local offset = tonumber(ARGV[1])
local through = tonumber(redis.call('HGET', KEYS[2], 'through') or '-1')
local floor = tonumber(redis.call('HGET', KEYS[2], 'floor') or '-1')
local rolled_back = 0
if ARGV[6] ~= '' and through < tonumber(ARGV[6]) then
  floor = offset
  redis.call('HSET', KEYS[2], 'floor', floor)
  rolled_back = 2
end
if offset > through then
  redis.call('HSET', KEYS[2], 'through', offset)
end

local id = ARGV[1] .. '-1'
local prev = ''
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  prev = string.match(last[1][1], '^(%d+)%-1$') or ''
end
if prev ~= '' and tonumber(prev) < floor then
  prev = ''
end
local ok, err = pcall(redis.call, 'XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], id, 'e', ARGV[2], 'p', prev)
if not ok then
  local message = type(err) == 'table' and err.err or tostring(err)
  -- An id at or below the stream's top means a replayed offset: a no-op, not a second publish.
  if string.find(message, 'equal or smaller', 1, true) then
    -- A true replay finds its own entry, identical. Entries between the window's first and its
    -- top are never trimmed, so an offset in that range with no entry or another one is not a
    -- replay of this log.
    local same = redis.call('XRANGE', KEYS[1], id, id)
    if #same > 0 then
      if same[1][2][2] ~= ARGV[2] then
        return rolled_back + 4
      end
      return rolled_back
    end
    local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    if #first > 0 and tonumber(string.match(first[1][1], '^(%d+)')) < offset then
      return rolled_back + 4
    end
    return rolled_back
  end
  return redis.error_reply(message)
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
local head = ARGV[1]
if ARGV[8] ~= '' then
  head = head .. ' ' .. ARGV[8]
end
redis.call(ARGV[7], ARGV[4], head .. '\n' .. ARGV[2])
return 1 + rolled_back
