-- The agent registry of one tenant: registrations that live while their agent heartbeats,
-- atomically, on one slot.
--
-- KEYS[1]  aw:reg:{tenant}:exp  (zset: agent id -> expiry, Unix ms; every other key is named
--          from it and shares its hash tag, so the script touches one slot)
-- ARGV[1]  op
-- ARGV[2…] the op's arguments (see each op)
--
-- Keys (prefix P = aw:reg:{tenant}:):
--   P exp          zset  agent -> when its registration expires
--   P doc          hash  agent -> the registration JSON (without registered_at_ms)
--   P since        hash  agent -> when it joined (Unix ms)
--   P load         hash  agent -> tasks in flight, as the last heartbeat said
--   P cap:<name>   set   the agents that registered capability <name>
--
-- Times are Valkey's clock (TIME), so every gateway agrees on expiry. A registration past
-- its expiry is dead even before the sweep removes it: discover and heartbeat ignore it.

local exp_key = KEYS[1]
local P = string.sub(exp_key, 1, #exp_key - 3)
local op = ARGV[1]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function caps_of(doc)
  local ok, decoded = pcall(cjson.decode, doc)
  if ok and type(decoded) == 'table' and type(decoded.capabilities) == 'table' then
    return decoded.capabilities
  end
  return {}
end

local function ttl_of(doc)
  local ok, decoded = pcall(cjson.decode, doc)
  if ok and type(decoded) == 'table' then
    return tonumber(decoded.ttl_ms) or 30000
  end
  return 30000
end

-- Removes an agent's registration; returns {doc, since} of what was there.
local function remove(agent)
  local doc = redis.call('HGET', P .. 'doc', agent)
  local since = redis.call('HGET', P .. 'since', agent) or ''
  if doc then
    for _, cap in ipairs(caps_of(doc)) do
      redis.call('SREM', P .. 'cap:' .. cap, agent)
    end
  end
  redis.call('ZREM', exp_key, agent)
  redis.call('HDEL', P .. 'doc', agent)
  redis.call('HDEL', P .. 'since', agent)
  redis.call('HDEL', P .. 'load', agent)
  return {doc or '', since}
end

local function view(agent, expires)
  local doc = redis.call('HGET', P .. 'doc', agent)
  if not doc then return nil end
  return {doc, redis.call('HGET', P .. 'since', agent) or '', tostring(expires),
    redis.call('HGET', P .. 'load', agent) or '0'}
end

-- register agent doc ttl_ms cap…
-- -> {kind, expires, expired_doc, expired_since}: kind is joined, updated (a live
-- registration whose document changed) or renewed (the same document); expired_doc is a
-- registration that had expired but was not swept yet (to log as expired first), or ''.
if op == 'register' then
  local agent, doc, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local old_exp = redis.call('ZSCORE', exp_key, agent)
  local kind, expired = 'joined', {'', ''}
  if old_exp and tonumber(old_exp) <= now then
    expired = remove(agent)
  elseif old_exp then
    local old = redis.call('HGET', P .. 'doc', agent) or ''
    kind = (old == doc) and 'renewed' or 'updated'
    for _, cap in ipairs(caps_of(old)) do
      redis.call('SREM', P .. 'cap:' .. cap, agent)
    end
  end
  local expires = now + ttl
  redis.call('HSET', P .. 'doc', agent, doc)
  redis.call('ZADD', exp_key, expires, agent)
  for i = 5, #ARGV do
    redis.call('SADD', P .. 'cap:' .. ARGV[i], agent)
  end
  if kind == 'joined' then
    redis.call('HSET', P .. 'since', agent, now)
    redis.call('HSET', P .. 'load', agent, 0)
  end
  return {kind, tostring(expires), expired[1], expired[2]}
end

-- heartbeat agent in_flight (-1: unchanged) -> {'ok', expires} or {'unknown'}
if op == 'heartbeat' then
  local agent, load = ARGV[2], tonumber(ARGV[3])
  local old_exp = redis.call('ZSCORE', exp_key, agent)
  if not old_exp or tonumber(old_exp) <= now then return {'unknown'} end
  local doc = redis.call('HGET', P .. 'doc', agent)
  if not doc then return {'unknown'} end
  local expires = now + ttl_of(doc)
  redis.call('ZADD', exp_key, expires, agent)
  if load >= 0 then redis.call('HSET', P .. 'load', agent, load) end
  return {'ok', tostring(expires)}
end

-- deregister agent -> {'left' | 'expired', doc, since} or {'unknown'}
if op == 'deregister' then
  local agent = ARGV[2]
  local old_exp = redis.call('ZSCORE', exp_key, agent)
  if not old_exp then return {'unknown'} end
  local kind = (tonumber(old_exp) <= now) and 'expired' or 'left'
  local gone = remove(agent)
  return {kind, gone[1], gone[2]}
end

-- sweep limit -> {{agent, doc, since}…}: the registrations past their expiry, removed
if op == 'sweep' then
  local due = redis.call('ZRANGEBYSCORE', exp_key, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
  local out = {}
  for _, agent in ipairs(due) do
    local gone = remove(agent)
    out[#out + 1] = {agent, gone[1], gone[2]}
  end
  return out
end

-- discover capability ('' for every agent) limit -> {{doc, since, expires, load}…}
if op == 'discover' then
  local cap, limit = ARGV[2], tonumber(ARGV[3])
  local agents
  if cap == '' then
    agents = redis.call('ZRANGEBYSCORE', exp_key, '(' .. now, '+inf', 'LIMIT', 0, limit)
  else
    agents = redis.call('SMEMBERS', P .. 'cap:' .. cap)
    table.sort(agents)
  end
  local out = {}
  for _, agent in ipairs(agents) do
    if #out >= limit then break end
    local expires = redis.call('ZSCORE', exp_key, agent)
    if expires and tonumber(expires) > now then
      local v = view(agent, expires)
      if v then out[#out + 1] = v end
    end
  end
  return out
end

-- get agent -> {doc, since, expires, load} or {}
if op == 'get' then
  local agent = ARGV[2]
  local expires = redis.call('ZSCORE', exp_key, agent)
  if not expires or tonumber(expires) <= now then return {} end
  return view(agent, expires) or {}
end

return redis.error_reply('unknown registry op ' .. tostring(op))
