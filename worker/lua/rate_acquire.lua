-- Shared, adaptive GCRA rate limiter on the Redis server's clock.
-- KEYS[1] limiter hash: tat_us (theoretical arrival time), rate (after the last cut), cut_us
-- ARGV[1] configured limit (req/s), ARGV[2] burst (requests), ARGV[3] furthest slot to reserve (us),
-- ARGV[4] recovery (req/s gained per second since the last cut), ARGV[5] floor (req/s),
-- ARGV[6] a slot this caller reserved earlier ('' if none), ARGV[7] when it reserved it,
-- ARGV[8] how late a reserved slot may still be used (us)
-- Returns {granted (1/0), wait_us, current rate * 1000, now_us}
if redis.replicate_commands then
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'tat_us', 'rate', 'cut_us')
local rate = limit
if state[2] then
  rate = math.min(limit, tonumber(state[2]) + tonumber(ARGV[4]) * (now - tonumber(state[3])) / 1000000)
end
rate = math.max(rate, tonumber(ARGV[5]))
if ARGV[6] ~= '' then
  -- A reservation holds unless the rate was cut after it was made, or it is used too late
  -- (late callers would arrive together: they queue again instead).
  local slot = tonumber(ARGV[6])
  if tonumber(state[3] or '0') < tonumber(ARGV[7]) and now - slot <= tonumber(ARGV[8]) then
    return {1, math.max(0, math.floor(slot - now)), math.floor(rate * 1000), now}
  end
end
local interval = 1000000 / rate
local tolerance = (tonumber(ARGV[2]) - 1) * interval
local tat = math.max(tonumber(state[1] or '0'), now)
local wait = tat - tolerance - now
if wait > tonumber(ARGV[3]) then
  return {0, math.floor(wait), math.floor(rate * 1000), now}
end
redis.call('HSET', KEYS[1], 'tat_us', tostring(tat + interval))
redis.call('PEXPIRE', KEYS[1], 3600000)
return {1, math.max(0, math.floor(wait)), math.floor(rate * 1000), now}
