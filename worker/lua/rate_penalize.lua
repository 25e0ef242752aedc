-- Stripe answered 429 although we kept to our limit: cut the shared rate (at most once a cooldown).
-- KEYS[1] limiter hash; ARGV[1] configured limit, ARGV[2] factor (0..1), ARGV[3] cooldown (us),
-- ARGV[4] recovery (req/s per s), ARGV[5] floor (req/s). Returns the new rate * 1000.
if redis.replicate_commands then
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'rate', 'cut_us')
local rate = limit
if state[1] then
  if now - tonumber(state[2]) < tonumber(ARGV[3]) then
    return math.floor(tonumber(state[1]) * 1000)
  end
  rate = math.min(limit, tonumber(state[1]) + tonumber(ARGV[4]) * (now - tonumber(state[2])) / 1000000)
end
rate = math.max(tonumber(ARGV[5]), rate * tonumber(ARGV[2]))
-- Reservations made at the old rate are void (callers re-queue): restart the schedule now.
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'cut_us', tostring(now), 'tat_us', tostring(now))
redis.call('PEXPIRE', KEYS[1], 3600000)
return math.floor(rate * 1000)
