-- Shared, adaptive rate limiter on the Redis server's clock: two GCRAs in one hash.
--   tat_us   the schedule: slots handed out (reserved) to callers, spaced by 1/rate;
--   send_us  the sends: every request actually let go, spaced by 1/rate (+ a small burst).
-- A caller whose slot is near sleeps until it; one whose slot is far is re-queued with that
-- slot reserved. When it comes back (on time or late) it is let go as soon as the send GCRA
-- allows: late callers neither lose their slot nor arrive in a burst.
-- Returns {verdict (1 go, 2 reserved, 0 denied, 3 void), wait_us, rate * 1000, now_us, slot_us,
-- reserved_us}
local limiter = KEYS[1]                   -- tat_us, send_us, rate (after the last cut), cut_us;
                                          -- and the limit, recovery and floor last used
local limit = tonumber(ARGV[1])           -- configured (req/s)
local burst = tonumber(ARGV[2])           -- requests
local horizon_us = tonumber(ARGV[3])      -- furthest slot to reserve
local recovery = tonumber(ARGV[4])        -- req/s gained per second since the last cut
local floor = tonumber(ARGV[5])           -- req/s
local reserved_slot = ARGV[6]             -- a slot this caller reserved earlier ('' if none)
local reserved_at = ARGV[7]               -- when it reserved it
local max_sleep = tonumber(ARGV[8])       -- longest wait a caller sleeps through (us)
local void_returns = ARGV[9] == '1'       -- a void reservation answers 3 (choose again)

if redis.replicate_commands then
  redis.replicate_commands()
end
local now = now_us()
local state = redis.call('HMGET', limiter, 'tat_us', 'send_us', 'rate', 'cut_us')
local rate = recovered_rate(limit, state[3], state[4], recovery, floor, now)
local interval = 1000000 / rate
local tolerance = (burst - 1) * interval
-- What the workers use, for `adjustments stats` (whose own settings may differ).
redis.call('HSET', limiter, 'limit', tostring(limit), 'recovery', tostring(recovery),
  'floor', tostring(floor))
redis.call('PEXPIRE', limiter, 3600000)

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
  redis.call('HSET', limiter, 'send_us', tostring(math.max(tonumber(state[2] or '0'), when) + interval))
  redis.call('PEXPIRE', limiter, 3600000)
  return {1, math.floor(when - now), math.floor(rate * 1000), now, math.floor(slot), reserved_at}
end

if reserved_slot ~= '' and tonumber(state[4] or '0') < tonumber(reserved_at) then
  -- A reservation made since the last cut: honoured (early: wait for it; late: go now).
  local slot = tonumber(reserved_slot)
  return go(math.max(now, slot), slot, tonumber(reserved_at))
end
if reserved_slot ~= '' and void_returns then
  -- Made before a cut: void. The caller chooses again (another platform may be freer).
  return {3, 0, math.floor(rate * 1000), now, 0, 0}
end

local tat = math.max(tonumber(state[1] or '0'), now)
local wait = tat - tolerance - now
if wait > horizon_us then
  return {0, math.floor(wait), math.floor(rate * 1000), now, 0, 0}  -- 0: nothing reserved
end
local slot = now + math.max(0, wait)
redis.call('HSET', limiter, 'tat_us', tostring(tat + interval))
redis.call('PEXPIRE', limiter, 3600000)
if wait <= max_sleep then
  return go(slot, slot, now)
end
return {2, math.floor(wait), math.floor(rate * 1000), now, math.floor(slot), now}
