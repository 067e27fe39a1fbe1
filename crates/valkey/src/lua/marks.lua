-- Reads or sets a session's annotation marks (see annotate.lua), for drills and repairs.
-- KEYS[1] annotation marks (a hash: version -> highest annotated source offset)
-- ARGV[1] 'get', 'set' or 'del'   ARGV[2] version (set, del)   ARGV[3] offset (set)
-- ARGV[4] idle TTL in seconds (set)
-- get: the marks as a flat list `version, offset, …`; a marker of the single-version format
--      (written before versions) reads as the version ''.
-- set: sets the version's mark to exactly that offset (replacing a single-version marker)
--      and renews the TTL; returns 1.
-- del: removes the version's mark (the version '' removes a single-version marker); returns
--      1 if there was one, else 0.
local kind = redis.call('TYPE', KEYS[1])['ok']
local op = ARGV[1]
if op == 'get' then
  if kind == 'none' then
    return {}
  elseif kind == 'string' then
    return {'', redis.call('GET', KEYS[1])}
  end
  return redis.call('HGETALL', KEYS[1])
elseif op == 'set' then
  if kind == 'string' then
    redis.call('DEL', KEYS[1])
  end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 1
elseif op == 'del' then
  if kind == 'none' then
    return 0
  elseif kind == 'string' then
    if ARGV[2] == '' then
      return redis.call('DEL', KEYS[1])
    end
    return 0
  end
  return redis.call('HDEL', KEYS[1], ARGV[2])
end
return redis.error_reply('unknown marks operation ' .. op)
