-- Announces one enrichment (the enricher's annotation of an event) to the event's session
-- channel, once per source offset, and only after the event itself was announced.
-- KEYS[1] annotated-through marker   KEYS[2] history stream
-- ARGV[1] source offset   ARGV[2] annotation JSON   ARGV[3] session channel
-- ARGV[4] idle TTL in seconds   ARGV[5] '1' to publish even if the event is not in the window
-- ARGV[6] the command announcing on the session channel: PUBLISH, or SPUBLISH on a cluster
-- ARGV[7] the announcement's metadata (`t=<traceparent> ts=<ms>`), '' for none
-- ARGV[8..] further channels (label feeds, classic PUBLISH: they are not in the session's slot)
-- Returns 1 published, 0 already published (a replay), -1 the event is not announced yet.
--
-- A session lives in one partition and the enricher publishes its records in order, so the
-- highest annotated offset is enough to recognise every replay.
local offset = tonumber(ARGV[1])
local through = tonumber(redis.call('GET', KEYS[1]) or '-1')
if offset <= through then
  return 0
end
if ARGV[5] ~= '1' then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local top = -1
  if #last > 0 then
    top = tonumber(string.match(last[1][1], '^(%d+)%-1$') or '-1')
  end
  if top < offset then
    return -1
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
local head = 'a'
if ARGV[7] ~= '' then
  head = head .. ' ' .. ARGV[7]
end
local message = head .. '\n' .. ARGV[2]
redis.call(ARGV[6], ARGV[3], message)
for i = 8, #ARGV do
  redis.call('PUBLISH', ARGV[i], message)
end
return 1
