-- Announces one enrichment (the enricher's annotation of an event) to the event's session
-- channel, once per source offset and enrichment version, and only after the event itself was
-- announced.
-- KEYS[1] annotation marks (a hash: version -> highest annotated source offset)
-- KEYS[2] history stream
-- ARGV[1] source offset   ARGV[2] annotation JSON   ARGV[3] session channel
-- ARGV[4] idle TTL in seconds   ARGV[5] '1' to publish even if the event is not in the window
-- ARGV[6] the command announcing on the session channel: PUBLISH, or SPUBLISH on a cluster
-- ARGV[7] the announcement's metadata (`t=<traceparent> ts=<ms>`), '' for none
-- ARGV[8] the enrichment's version (`<model>@<digest>`)
-- ARGV[9] the version a marker of the single-version format stands for (the model)
-- ARGV[10..] further channels (label feeds, classic PUBLISH: they are not in the session's slot)
-- Returns 1 published, 0 already published for this version (a replay), -1 the event is not
-- announced yet.
--
-- A session lives in one partition and the enricher publishes its records in order, so the
-- highest annotated offset per version is enough to recognise every replay: a redrive by the
-- same model and labels announces nothing again, one by a new version announces each event
-- once more, with the new version.
local offset = tonumber(ARGV[1])
local version = ARGV[8]
if redis.call('TYPE', KEYS[1])['ok'] == 'string' then
  -- Written before versions: one mark for the one model there was (records of that time have
  -- no version and read as their model).
  local legacy = redis.call('GET', KEYS[1])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], ARGV[9], legacy)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local through = tonumber(redis.call('HGET', KEYS[1], version) or '-1')
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
redis.call('HSET', KEYS[1], version, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local head = 'a'
if ARGV[7] ~= '' then
  head = head .. ' ' .. ARGV[7]
end
local message = head .. '\n' .. ARGV[2]
redis.call(ARGV[6], ARGV[3], message)
for i = 10, #ARGV do
  redis.call('PUBLISH', ARGV[i], message)
end
return 1
