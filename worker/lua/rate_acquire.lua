-- Shared, adaptive rate limiter on the Redis server's clock: two GCRAs in one hash.
--   tat_us   the schedule: slots handed out (reserved) to callers, spaced by 1/rate;
--   send_us  the sends: every request actually let go, spaced by 1/rate (+ a small burst).
-- A caller whose slot is near sleeps until it; one whose slot is far is re-queued with that
-- slot reserved. When it comes back (on time or late) it is let go as soon as the send GCRA
-- allows: late callers neither lose their slot nor arrive in a burst.
-- KEYS[1] limiter hash: tat_us, send_us, rate (after the last cut), cut_us; and the limit,
--   recovery and floor the last caller used
-- ARGV[1] configured limit (req/s), ARGV[2] burst (requests), ARGV[3] furthest slot to reserve (us),
-- ARGV[4] recovery (req/s gained per second since the last cut), ARGV[5] floor (req/s),
-- ARGV[6] a slot this caller reserved earlier ('' if none), ARGV[7] when it reserved it,
-- ARGV[8] longest wait a caller sleeps through (us)
-- Returns {verdict (1 go, 2 reserved, 0 denied), wait_us, rate * 1000, now_us, slot_us, reserved_us}
if redis.replicate_commands then
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'tat_us', 'send_us', 'rate', 'cut_us')
local rate = limit
if state[3] then
  rate = math.min(limit, tonumber(state[3]) + tonumber(ARGV[4]) * (now - tonumber(state[4])) / 1000000)
end
rate = math.max(rate, tonumber(ARGV[5]))
local interval = 1000000 / rate
local tolerance = (tonumber(ARGV[2]) - 1) * interval
local max_sleep = tonumber(ARGV[8])
-- What the workers use, for `adjustments stats` (whose own settings may differ).
redis.call('HSET', KEYS[1], 'limit', ARGV[1], 'recovery', ARGV[4], 'floor', ARGV[5])
redis.call('PEXPIRE', KEYS[1], 3600000)

-- The earliest time at or after `at` when a send keeps to the rate.
local function send_time(at)
  local s = math.max(tonumber(state[2] or '0'), at)
  return math.max(at, s - tolerance)
end

-- 1: go after wait_us (the send is counted); 2: come back after wait_us with this reservation.
local function go(at, slot, reserved_at)
  local when = send_time(at)
  if when - now > max_sleep then
    return {2, math.floor(when - now), math.floor(rate * 1000), now, math.floor(slot), reserved_at}
  end
  redis.call('HSET', KEYS[1], 'send_us', tostring(math.max(tonumber(state[2] or '0'), when) + interval))
  redis.call('PEXPIRE', KEYS[1], 3600000)
  return {1, math.floor(when - now), math.floor(rate * 1000), now, math.floor(slot), reserved_at}
end

if ARGV[6] ~= '' and tonumber(state[4] or '0') < tonumber(ARGV[7]) then
  -- A reservation made since the last cut: honoured (early: wait for it; late: go now).
  local slot = tonumber(ARGV[6])
  return go(math.max(now, slot), slot, tonumber(ARGV[7]))
end

local tat = math.max(tonumber(state[1] or '0'), now)
local wait = tat - tolerance - now
if wait > tonumber(ARGV[3]) then
  return {0, math.floor(wait), math.floor(rate * 1000), now, 0, 0}  -- 0: nothing reserved
end
local slot = now + math.max(0, wait)
redis.call('HSET', KEYS[1], 'tat_us', tostring(tat + interval))
redis.call('PEXPIRE', KEYS[1], 3600000)
if wait <= max_sleep then
  return go(slot, slot, now)
end
return {2, math.floor(wait), math.floor(rate * 1000), now, math.floor(slot), now}
