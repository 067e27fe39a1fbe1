-- GCRA rate limit shared by every gateway: one key per tenant holds its theoretical arrival
-- time (TAT) in milliseconds of the Valkey server's clock.
-- KEYS[1] limit key   ARGV[1] emission interval in ms (1000 / rate)
-- ARGV[2] burst tolerance in ms (interval * (burst - 1))   ARGV[3] cost (events)
-- Returns 0 when allowed (and charged), else the milliseconds to wait before retrying.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval - tolerance
if allow_at > now then
  return math.ceil(allow_at - now)
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return 0
