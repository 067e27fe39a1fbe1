-- Producer sequence state for idempotent publishing, one hash per (tenant, producer_id):
--   epoch  the producer's current epoch          next   the next producer_seq expected
--   s:<seq> the outcome of that sequence: "<partition>:<offset>" once Kafka acknowledged it,
--           "p:<ms>" while a gateway appends it (since <ms>, Valkey clock), "f" if that failed
--           before anything was sent, "u:<ms>" if Kafka did not confirm it in time (it may or
--           may not be in the log: a retry waits until it can no longer land, then looks).
-- Only the last ARGV window sequences keep their s:<seq> field.
-- KEYS[1] the producer's state   KEYS[2] the tenant's "rebuilt from the log" marker
-- ARGV[1] op: reserve | commit | release | unknown | bump | restore   ARGV[2] ttl ms   ARGV[3] window
-- reserve  ARGV[4] epoch ARGV[5] seq ARGV[6] stale ms ARGV[7] unknown-settle ms
--          -> {"not_ready"} | {"stale_epoch", current} | {"gap", expected} | {"reserved"}
--             | {"duplicate", "<p>:<o>"} | {"in_flight"} | {"too_old", expected}
--             | {"takeover", pending_since_ms}
-- commit   ARGV[4] epoch ARGV[5] seq ARGV[6] "<partition>:<offset>" -> 1 (0: epoch fenced)
-- release  ARGV[4] epoch ARGV[5] seq -> 1
-- unknown  ARGV[4] epoch ARGV[5] seq -> 1
-- bump     -> {"not_ready"} | {"epoch", new epoch}
-- (numbers in replies are decimal strings)
-- restore  ARGV[4] epoch ARGV[5] next, then pairs seq, "<p>:<o>" -> 1 (merges, never lowers)
-- repair   like restore, and the log's outcome also replaces a different recorded outcome or a
--          "f" (nothing written) for a sequence the log holds (a replay drill's rebuild); an
--          append in flight ("p:", "u:") is left to its gateway -> 1, 0 when a newer epoch
--          holds the state
local key, ready = KEYS[1], KEYS[2]
local op, ttl, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function touch()
  redis.call('PEXPIRE', key, ttl)
end

local function forget_before(seq)
  if seq > window then
    redis.call('HDEL', key, 's:' .. (seq - window))
  end
end

if op == 'restore' or op == 'repair' then
  local epoch, next_seq = tonumber(ARGV[4]), tonumber(ARGV[5])
  local current = tonumber(redis.call('HGET', key, 'epoch') or '-1')
  if current > epoch then
    return op == 'restore' and 1 or 0
  end
  if current < epoch then
    redis.call('DEL', key)
    redis.call('HSET', key, 'epoch', epoch, 'next', next_seq)
  elseif tonumber(redis.call('HGET', key, 'next')) < next_seq then
    redis.call('HSET', key, 'next', next_seq)
  end
  for i = 6, #ARGV, 2 do
    local field = 's:' .. ARGV[i]
    if op == 'repair' then
      local held = redis.call('HGET', key, field)
      local state = string.sub(held or '', 1, 2)
      if state ~= 'p:' and state ~= 'u:' then
        redis.call('HSET', key, field, ARGV[i + 1])
      end
    else
      redis.call('HSETNX', key, field, ARGV[i + 1])
    end
  end
  touch()
  return 1
end

if op == 'commit' or op == 'release' or op == 'unknown' then
  local epoch, seq = tonumber(ARGV[4]), tonumber(ARGV[5])
  local current = tonumber(redis.call('HGET', key, 'epoch') or '-1')
  if current > epoch then
    return 0
  end
  if current < epoch then
    -- The state was lost (or rebuilt without this record): start it from this outcome.
    redis.call('DEL', key)
    redis.call('HSET', key, 'epoch', epoch, 'next', seq)
  end
  if op == 'commit' then
    redis.call('HSET', key, 's:' .. seq, ARGV[6])
    if tonumber(redis.call('HGET', key, 'next')) <= seq then
      redis.call('HSET', key, 'next', seq + 1)
    end
  elseif string.sub(redis.call('HGET', key, 's:' .. seq) or '', 1, 2) == 'p:' then
    redis.call('HSET', key, 's:' .. seq, op == 'release' and 'f' or ('u:' .. now))
  end
  touch()
  return 1
end

if redis.call('EXISTS', ready) == 0 then
  return {'not_ready'}
end

if op == 'bump' then
  local epoch = tonumber(redis.call('HGET', key, 'epoch') or '0') + 1
  redis.call('DEL', key)
  redis.call('HSET', key, 'epoch', epoch, 'next', 1)
  touch()
  return {'epoch', tostring(epoch)}
end

-- reserve
local epoch, seq, stale, settle = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local current = tonumber(redis.call('HGET', key, 'epoch') or '-1')
if epoch < current then
  return {'stale_epoch', tostring(current)}
end
if epoch > current then
  redis.call('DEL', key)
  redis.call('HSET', key, 'epoch', epoch, 'next', 1)
end
local expected = tonumber(redis.call('HGET', key, 'next'))
if seq > expected then
  return {'gap', tostring(expected)}
end
if seq == expected then
  redis.call('HSET', key, 's:' .. seq, 'p:' .. now, 'next', seq + 1)
  forget_before(seq)
  touch()
  return {'reserved'}
end
local outcome = redis.call('HGET', key, 's:' .. seq)
if not outcome then
  return {'too_old', tostring(expected)}
end
if outcome == 'f' then
  redis.call('HSET', key, 's:' .. seq, 'p:' .. now)
  touch()
  return {'reserved'}
end
local state = string.sub(outcome, 1, 2)
if state == 'p:' or state == 'u:' then
  local since = tonumber(string.sub(outcome, 3))
  if now - since < (state == 'p:' and stale or settle) then
    return {'in_flight'}
  end
  redis.call('HSET', key, 's:' .. seq, 'p:' .. now)
  touch()
  return {'takeover', tostring(since)}
end
return {'duplicate', outcome}
