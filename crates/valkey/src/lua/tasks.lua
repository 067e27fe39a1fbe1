-- The work queue of one tenant: every transition of a task, atomically, on one slot.
--
-- KEYS[1]  aw:tq:{tenant}:caps  (the set of the tenant's capabilities; every other key is
--          named from it and shares its hash tag, so the script touches one slot)
-- ARGV[1]  op
-- ARGV[2]  retention of finished tasks, ms
-- ARGV[3…] the op's arguments (see each op)
--
-- Keys (prefix P = aw:tq:{tenant}:):
--   P t:<id>          hash: doc (the TaskDoc JSON), cap, prio, enq, max, rinit, rmax, rmult,
--                     rjit, dl, idem; state, v, attempt, lease, lexp, nb, worker, err,
--                     reason, result, upd
--   P ready:<cap>     zset, score (9-prio)*1e13 + ready time: priority first, then age
--   P delayed:<cap>   zset, score not_before
--   P leases:<cap>    zset, score lease expiry
--   P dead:<cap>      zset, score the time it died
--   P idem:<key>      string: the task id an idempotency key named first
--   P wake            channel: a capability name, published when a task becomes ready
--
-- Every transition bumps `v` and returns {kind, id, <status>} for the caller to append to the
-- log (`status` is the list of STATUS fields). Times are Valkey's clock (TIME), so every
-- gateway agrees on lease expiry.

local caps_key = KEYS[1]
local P = string.sub(caps_key, 1, #caps_key - 4)
local op = ARGV[1]
local retention = tonumber(ARGV[2])

local STATUS = {'state', 'v', 'attempt', 'lease', 'lexp', 'nb', 'worker', 'err', 'reason',
  'result', 'upd'}
local BAND = 10000000000000

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function tkey(id) return P .. 't:' .. id end
local function zkey(kind, cap) return P .. kind .. ':' .. cap end

local function status(id)
  local values = redis.call('HMGET', tkey(id), unpack(STATUS))
  for i = 1, #values do
    if not values[i] then values[i] = '' end
  end
  return values
end

local function transition(out, kind, id)
  local entry = {kind, id}
  for _, v in ipairs(status(id)) do entry[#entry + 1] = v end
  out[#out + 1] = entry
end

local function num(v) return tonumber(v) or 0 end

-- Removes the task from every set of its capability.
local function unplace(id, cap)
  redis.call('ZREM', zkey('ready', cap), id)
  redis.call('ZREM', zkey('delayed', cap), id)
  redis.call('ZREM', zkey('leases', cap), id)
  redis.call('ZREM', zkey('dead', cap), id)
end

-- Puts the task where its state says, after its fields were written.
local function place(id)
  local k = tkey(id)
  local f = redis.call('HMGET', k, 'cap', 'prio', 'enq', 'state', 'nb', 'lexp', 'upd')
  local cap, prio, enq, state = f[1], num(f[2]), num(f[3]), f[4]
  unplace(id, cap)
  if state == 'ready' then
    local at = math.max(enq, num(f[5]))
    redis.call('ZADD', zkey('ready', cap), (9 - prio) * BAND + at, id)
    redis.call('PUBLISH', P .. 'wake', cap)
  elseif state == 'delayed' then
    redis.call('ZADD', zkey('delayed', cap), num(f[5]), id)
  elseif state == 'claimed' then
    redis.call('ZADD', zkey('leases', cap), num(f[6]), id)
  elseif state == 'dead' then
    redis.call('ZADD', zkey('dead', cap), num(f[7]), id)
  end
  if state == 'completed' or state == 'cancelled' then
    redis.call('PEXPIRE', k, retention)
    local idem = redis.call('HGET', k, 'idem')
    if idem and idem ~= '' then redis.call('PEXPIRE', P .. 'idem:' .. idem, retention) end
  else
    redis.call('PERSIST', k)
  end
end

local function set(id, fields)
  local args = {}
  for name, value in pairs(fields) do
    args[#args + 1] = name
    args[#args + 1] = tostring(value)
  end
  redis.call('HSET', tkey(id), unpack(args))
  redis.call('HINCRBY', tkey(id), 'v', 1)
  place(id)
end

local function die(out, id, reason, err)
  local fields = {state = 'dead', reason = reason, lexp = '', upd = now}
  if err then fields.err = err end
  set(id, fields)
  transition(out, 'dead_lettered', id)
end

-- Time-driven transitions of one capability: due delayed tasks become ready (no record: the
-- record that delayed them said when), expired leases give the task back (`lease_expired`)
-- or, on its last attempt, dead-letter it.
local function due(out, cap)
  local delayed = redis.call('ZRANGEBYSCORE', zkey('delayed', cap), '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(delayed) do
    redis.call('HSET', tkey(id), 'state', 'ready')
    place(id)
  end
  local expired = redis.call('ZRANGEBYSCORE', zkey('leases', cap), '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(expired) do
    local f = redis.call('HMGET', tkey(id), 'attempt', 'max')
    if num(f[1]) >= num(f[2]) then
      redis.call('HSET', tkey(id), 'lease', '')
      die(out, id, 'attempts', 'lease expired on the last attempt')
    else
      -- The lease is gone: its holder's complete, fail or release is stale from now on.
      set(id, {state = 'ready', lease = '', lexp = '', upd = now})
      transition(out, 'lease_expired', id)
    end
  end
end

-- Checks that `lease` is the current lease of a claimed task. Returns nil when it is, else
-- the refusal to return.
local function leased(id, lease)
  local f = redis.call('HMGET', tkey(id), 'state', 'lease')
  if not f[1] then return {'not_found'} end
  if f[1] ~= 'claimed' or f[2] ~= lease then return {'stale', f[1]} end
  return nil
end

-- Writes a task (create or newer version) from its fields; used by enqueue and apply.
-- fields: alternating names and values (doc fields and status fields).
local function write(id, fields, version)
  local k = tkey(id)
  local current = redis.call('HGET', k, 'v')
  if current and tonumber(current) >= version then return false end
  redis.call('HSET', k, unpack(fields))
  redis.call('HSET', k, 'v', version)
  local cap = redis.call('HGET', k, 'cap')
  if not cap then
    redis.call('DEL', k)
    return false
  end
  redis.call('SADD', caps_key, cap)
  place(id)
  return true
end

if op == 'enqueue' then
  -- ARGV[3] id, ARGV[4] idempotency key or '', ARGV[5…] doc fields (name, value, …).
  -- Status: ready, or delayed when `nb` (in the doc fields) is in the future.
  local id, idem = ARGV[3], ARGV[4]
  if idem ~= '' then
    local first = redis.call('GET', P .. 'idem:' .. idem)
    if first and first ~= id then return {'duplicate', first} end
  end
  if redis.call('EXISTS', tkey(id)) == 1 then return {'exists', id} end
  local fields = {}
  local nb = 0
  for i = 5, #ARGV, 2 do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    if ARGV[i] == 'nb' then nb = num(ARGV[i + 1]) end
  end
  local state = 'ready'
  if nb > now then state = 'delayed' end
  for _, v in ipairs({'state', state, 'attempt', 0, 'upd', now}) do fields[#fields + 1] = v end
  write(id, fields, 1)
  if idem ~= '' then redis.call('SET', P .. 'idem:' .. idem, id) end
  local out = {}
  transition(out, 'enqueued', id)
  return out[1]

elseif op == 'reserve_idem' then
  -- ARGV[3] key, ARGV[4] id, ARGV[5] ttl ms: names `id` as the key's task unless another
  -- task has it. Returns the key's task id.
  local k = P .. 'idem:' .. ARGV[3]
  if redis.call('SET', k, ARGV[4], 'NX', 'PX', ARGV[5]) then return ARGV[4] end
  return redis.call('GET', k)

elseif op == 'unreserve_idem' then
  -- ARGV[3] key, ARGV[4] id: drops a reservation that was never used.
  local k = P .. 'idem:' .. ARGV[3]
  if redis.call('GET', k) == ARGV[4] and redis.call('EXISTS', tkey(ARGV[4])) == 0 then
    redis.call('DEL', k)
  end
  return 1

elseif op == 'apply' then
  -- ARGV[3] id, ARGV[4] version, ARGV[5] idempotency key or '', ARGV[6] '1' if the task may
  -- be created here, ARGV[7…] fields (doc fields only when the record carries the doc). A
  -- version not newer than the stored one, or a record of a task unknown here without its
  -- doc, changes nothing; a task unknown here is created only when ARGV[6] allows it (the
  -- caller checked that Valkey did not lose the queues, see `keys::task_queues_intact`).
  local id, version, idem, may_create = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6] == '1'
  local fields = {}
  local has_doc = false
  for i = 7, #ARGV, 2 do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    if ARGV[i] == 'doc' then has_doc = true end
  end
  local known = redis.call('EXISTS', tkey(id)) == 1
  if not has_doc and not known then return 'unknown' end
  if not known and not may_create then return 'absent' end
  if idem ~= '' then
    -- The key names its first task for good (a reservation's expiry is dropped); a second
    -- task enqueued under a key already taken is not created.
    local k = P .. 'idem:' .. idem
    local first = redis.call('GET', k)
    if first and first ~= id and not known then return 'duplicate' end
    if first == id then redis.call('PERSIST', k) else redis.call('SET', k, id) end
  end
  if not write(id, fields, version) then return 'stale' end
  return 'applied'

elseif op == 'claim' then
  -- ARGV[3] max tasks, ARGV[4] lease ms, ARGV[5] worker, ARGV[6] number of capabilities,
  -- then the capabilities, then one new lease id per task. Returns {transitions, claimed}:
  -- the records to append, and per claimed task {id, doc, status…}.
  local n, lease_ms, worker, ncaps = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
  local caps = {}
  for i = 1, ncaps do caps[i] = ARGV[6 + i] end
  local leases = {}
  for i = 7 + ncaps, #ARGV do leases[#leases + 1] = ARGV[i] end
  local out, claimed = {}, {}
  for _, cap in ipairs(caps) do due(out, cap) end
  while #claimed < n do
    local best, best_cap, best_score = nil, nil, nil
    for _, cap in ipairs(caps) do
      local head = redis.call('ZRANGE', zkey('ready', cap), 0, 0, 'WITHSCORES')
      if head[1] and (not best_score or tonumber(head[2]) < best_score) then
        best, best_cap, best_score = head[1], cap, tonumber(head[2])
      end
    end
    if not best then break end
    local f = redis.call('HMGET', tkey(best), 'dl', 'attempt', 'max')
    if num(f[1]) > 0 and num(f[1]) < now then
      die(out, best, 'deadline', 'the deadline passed before a worker took it')
    elseif num(f[2]) >= num(f[3]) then
      die(out, best, 'attempts', 'no attempts left')
    else
      local lease = leases[#claimed + 1]
      set(best, {state = 'claimed', attempt = num(f[2]) + 1, lease = lease,
        lexp = now + lease_ms, worker = worker, upd = now})
      transition(out, 'claimed', best)
      local entry = {best, redis.call('HGET', tkey(best), 'doc')}
      for _, v in ipairs(status(best)) do entry[#entry + 1] = v end
      claimed[#claimed + 1] = entry
    end
  end
  return {out, claimed}

elseif op == 'sweep' then
  -- Time-driven transitions of every capability (ARGV[3…] or, none given, all of them).
  local out = {}
  local caps = {}
  for i = 3, #ARGV do caps[#caps + 1] = ARGV[i] end
  if #caps == 0 then caps = redis.call('SMEMBERS', caps_key) end
  for _, cap in ipairs(caps) do due(out, cap) end
  return out

elseif op == 'heartbeat' then
  -- ARGV[3] id, ARGV[4] lease, ARGV[5] lease ms: extends the lease. Not a transition.
  local id, lease, lease_ms = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local refused = leased(id, lease)
  if refused then return refused end
  local cap = redis.call('HGET', tkey(id), 'cap')
  redis.call('HSET', tkey(id), 'lexp', now + lease_ms)
  redis.call('ZADD', zkey('leases', cap), now + lease_ms, id)
  return {'ok', tostring(now + lease_ms)}

elseif op == 'complete' then
  -- ARGV[3] id, ARGV[4] lease, ARGV[5] result JSON or ''. A retry of a completion that
  -- already happened with the same lease answers `already` with the status.
  local id, lease, result = ARGV[3], ARGV[4], ARGV[5]
  local f = redis.call('HMGET', tkey(id), 'state', 'lease')
  if f[1] == 'completed' and f[2] == lease then return {'already', status(id)} end
  local refused = leased(id, lease)
  if refused then return refused end
  set(id, {state = 'completed', result = result, lexp = '', upd = now})
  local out = {}
  transition(out, 'completed', id)
  return {'ok', out}

elseif op == 'fail' then
  -- ARGV[3] id, ARGV[4] lease, ARGV[5] error, ARGV[6] retryable (1/0), ARGV[7] a uniform
  -- draw in [0,1) for the jitter.
  local id, lease, err, retryable, unit = ARGV[3], ARGV[4], ARGV[5], ARGV[6] == '1', tonumber(ARGV[7])
  local f = redis.call('HMGET', tkey(id), 'state', 'lease', 'attempt', 'max', 'rinit', 'rmax',
    'rmult', 'rjit')
  local last_err = redis.call('HGET', tkey(id), 'err')
  if (f[1] == 'delayed' or f[1] == 'dead') and f[2] == lease and last_err == err then
    return {'already', status(id)}
  end
  local refused = leased(id, lease)
  if refused then return refused end
  local out = {}
  local attempt, max = num(f[3]), num(f[4])
  if not retryable then
    die(out, id, 'not_retryable', err)
  elseif attempt >= max then
    die(out, id, 'attempts', err)
  else
    local full = math.min(num(f[6]), num(f[5]) * num(f[7]) ^ (attempt - 1))
    local delay = math.max(1, math.floor(full * (1 - num(f[8]) * unit) + 0.5))
    set(id, {state = 'delayed', nb = now + delay, err = err, lexp = '', upd = now})
    transition(out, 'retry_scheduled', id)
  end
  return {'ok', out}

elseif op == 'release' then
  -- ARGV[3] id, ARGV[4] lease: gives the task back, ready at once, the attempt not charged.
  local id, lease = ARGV[3], ARGV[4]
  local f = redis.call('HMGET', tkey(id), 'state', 'lease')
  if f[1] == 'ready' and f[2] == lease then return {'already', status(id)} end
  local refused = leased(id, lease)
  if refused then return refused end
  local attempt = num(redis.call('HGET', tkey(id), 'attempt'))
  set(id, {state = 'ready', attempt = math.max(0, attempt - 1), lexp = '', upd = now})
  local out = {}
  transition(out, 'released', id)
  return {'ok', out}

elseif op == 'cancel' then
  -- ARGV[3] id: cancels a task that is not finished (a claimed one's lease becomes stale).
  local id = ARGV[3]
  local state = redis.call('HGET', tkey(id), 'state')
  if not state then return {'not_found'} end
  -- A retry of a cancel answers with the status, so its record can be appended again.
  if state == 'cancelled' then return {'already', status(id)} end
  if state == 'completed' then return {'wrong_state', state} end
  set(id, {state = 'cancelled', lexp = '', upd = now})
  local out = {}
  transition(out, 'cancelled', id)
  return {'ok', out}

elseif op == 'requeue' or op == 'purge' then
  -- ARGV[3] capability, ARGV[4…] ids of its dead letters (none: every one, up to 1000).
  local cap = ARGV[3]
  local ids = {}
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
  if #ids == 0 then ids = redis.call('ZRANGE', zkey('dead', cap), 0, 999) end
  local out, refused = {}, {}
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', tkey(id), 'state', 'cap')
    if f[1] ~= 'dead' or f[2] ~= cap then
      refused[#refused + 1] = {id, f[1] or 'not_found'}
    elseif op == 'requeue' then
      set(id, {state = 'ready', attempt = 0, lease = '', reason = '', nb = '', upd = now})
      transition(out, 'requeued', id)
    else
      set(id, {state = 'cancelled', upd = now})
      transition(out, 'purged', id)
    end
  end
  return {out, refused}

elseif op == 'dead' then
  -- ARGV[3] capability, ARGV[4] offset, ARGV[5] count: dead letters, oldest first, as
  -- {id, doc, status…}.
  local ids = redis.call('ZRANGE', zkey('dead', ARGV[3]), tonumber(ARGV[4]),
    tonumber(ARGV[4]) + tonumber(ARGV[5]) - 1)
  local out = {}
  for _, id in ipairs(ids) do
    local entry = {id, redis.call('HGET', tkey(id), 'doc')}
    for _, v in ipairs(status(id)) do entry[#entry + 1] = v end
    out[#out + 1] = entry
  end
  return out

elseif op == 'get' then
  -- ARGV[3] id: {doc, status…} or {} when unknown.
  local doc = redis.call('HGET', tkey(ARGV[3]), 'doc')
  if not doc then return {} end
  local entry = {doc}
  for _, v in ipairs(status(ARGV[3])) do entry[#entry + 1] = v end
  return entry

elseif op == 'stats' then
  -- ARGV[3…] capabilities (none: all). Per capability {cap, ready, delayed, in_flight,
  -- dead, oldest ready time or ''}.
  local caps = {}
  for i = 3, #ARGV do caps[#caps + 1] = ARGV[i] end
  if #caps == 0 then caps = redis.call('SMEMBERS', caps_key) end
  table.sort(caps)
  local out = {}
  for _, cap in ipairs(caps) do
    local oldest = nil
    for band = 0, 9 do
      local head = redis.call('ZRANGEBYSCORE', zkey('ready', cap), band * BAND,
        '(' .. ((band + 1) * BAND), 'WITHSCORES', 'LIMIT', 0, 1)
      if head[1] then
        local at = tonumber(head[2]) - band * BAND
        if not oldest or at < oldest then oldest = at end
      end
    end
    out[#out + 1] = {cap, redis.call('ZCARD', zkey('ready', cap)),
      redis.call('ZCARD', zkey('delayed', cap)), redis.call('ZCARD', zkey('leases', cap)),
      redis.call('ZCARD', zkey('dead', cap)), oldest and tostring(oldest) or '', tostring(now)}
  end
  return out
end

return redis.error_reply('unknown task op ' .. tostring(op))
