-- A session's state, atomically: one hash per session, on the session's slot.
--
-- KEYS[1]  aw:{session}:state   hash: v (version), status, upd (Unix ms), f:<name> (a
--          field's JSON text, never decoded here), u:<name> (a counter's used amount),
--          l:<name> (a counter's limit)
-- ARGV[1]  op
--
-- update expect_version('' any) status('' unchanged) max_fields max_counters
--        then triples kind name value: f (set field), d (remove field), l (set limit),
--        L (remove limit), c (consume)
--   -> {'ok', <hgetall…>} | {'conflict', version} | {'budget', name, used, limit}
--      | {'too_many', 'fields'|'counters'}
-- get -> {<hgetall…>}
-- restore version <pairs…> -> 1 when stored (newer than Valkey's), 0 when stale

local key = KEYS[1]
local op = ARGV[1]

if op == 'get' then
  return redis.call('HGETALL', key)
end

if op == 'restore' then
  local version = tonumber(ARGV[2])
  local current = tonumber(redis.call('HGET', key, 'v') or '0')
  if version <= current then return 0 end
  redis.call('DEL', key)
  local pairs_ = {}
  for i = 3, #ARGV do pairs_[#pairs_ + 1] = ARGV[i] end
  if #pairs_ > 0 then redis.call('HSET', key, unpack(pairs_)) end
  redis.call('HSET', key, 'v', version)
  return 1
end

if op == 'update' then
  local current = tonumber(redis.call('HGET', key, 'v') or '0')
  if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
    return {'conflict', tostring(current)}
  end
  local status, max_fields, max_counters = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  -- Limits as they will be after this update, then every consume checked against them.
  local limits = {}
  for i = 6, #ARGV, 3 do
    local kind, name, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if kind == 'l' then limits[name] = tonumber(value)
    elseif kind == 'L' then limits[name] = false end
  end
  local consumed = {}
  for i = 6, #ARGV, 3 do
    local kind, name, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if kind == 'c' then
      local used = tonumber(redis.call('HGET', key, 'u:' .. name) or '0') + (consumed[name] or 0)
      local limit = limits[name]
      if limit == nil then limit = tonumber(redis.call('HGET', key, 'l:' .. name) or '') end
      local n = tonumber(value)
      if limit and used + n > limit then
        return {'budget', name, tostring(used), tostring(limit)}
      end
      consumed[name] = (consumed[name] or 0) + n
    end
  end
  -- Sizes as they will be, checked before anything is written (a script is atomic, not
  -- transactional: nothing written may be taken back).
  local fields, counters = 0, 0
  for _, name in ipairs(redis.call('HKEYS', key)) do
    local prefix = string.sub(name, 1, 2)
    if prefix == 'f:' then fields = fields + 1 elseif prefix == 'u:' then counters = counters + 1 end
  end
  local new_counters = {}
  for i = 6, #ARGV, 3 do
    local kind, name = ARGV[i], ARGV[i + 1]
    if kind == 'f' and redis.call('HEXISTS', key, 'f:' .. name) == 0 then fields = fields + 1
    elseif kind == 'd' and redis.call('HEXISTS', key, 'f:' .. name) == 1 then fields = fields - 1
    elseif (kind == 'l' or kind == 'c') and not new_counters[name]
        and redis.call('HEXISTS', key, 'u:' .. name) == 0 then
      new_counters[name] = true
      counters = counters + 1
    end
  end
  if fields > max_fields then return {'too_many', 'fields'} end
  if counters > max_counters then return {'too_many', 'counters'} end
  for i = 6, #ARGV, 3 do
    local kind, name, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if kind == 'f' then redis.call('HSET', key, 'f:' .. name, value)
    elseif kind == 'd' then redis.call('HDEL', key, 'f:' .. name)
    elseif kind == 'l' then
      redis.call('HSET', key, 'l:' .. name, value)
      redis.call('HSETNX', key, 'u:' .. name, 0)
    elseif kind == 'L' then redis.call('HDEL', key, 'l:' .. name)
    elseif kind == 'c' then redis.call('HINCRBY', key, 'u:' .. name, value) end
  end
  if status ~= '' then redis.call('HSET', key, 'status', status) end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', key, 'upd', now)
  redis.call('HINCRBY', key, 'v', 1)
  local out = {'ok'}
  for _, v in ipairs(redis.call('HGETALL', key)) do out[#out + 1] = v end
  return out
end

return redis.error_reply('unknown session state op ' .. tostring(op))
