-- Stripe answered 429 although we kept to our limit: cut the shared rate (at most once a
-- cooldown). Returns the new rate * 1000.
local limiter = KEYS[1]
local limit = tonumber(ARGV[1])      -- configured (req/s)
local factor = tonumber(ARGV[2])     -- 0..1
local cooldown_us = tonumber(ARGV[3])
local recovery = tonumber(ARGV[4])   -- req/s regained per second
local floor = tonumber(ARGV[5])      -- req/s

if redis.replicate_commands then
  redis.replicate_commands()
end
local now = now_us()
local state = redis.call('HMGET', limiter, 'rate', 'cut_us')
if state[1] and now - tonumber(state[2]) < cooldown_us then
  return math.floor(tonumber(state[1]) * 1000)
end
local rate = math.max(floor, recovered_rate(limit, state[1], state[2], recovery, floor, now) * factor)
-- Reservations made at the old rate are void (callers re-queue): restart the schedule now.
redis.call('HSET', limiter, 'rate', tostring(rate), 'cut_us', tostring(now), 'tat_us', tostring(now))
redis.call('PEXPIRE', limiter, 3600000)
return math.floor(rate * 1000)
