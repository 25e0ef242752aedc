-- How long until each of several limiters has a free slot, taking none (the platforms' rate
-- budgets: a worker spends its next send on the platform whose slot comes first).
-- Returns the wait for each, in microseconds (0: a slot is free now, or the limiter is off).
local limiters = KEYS                  -- the limiters' hashes (see rate_acquire.lua)
local policies = ARGV                  -- four per limiter: limit, burst, recovery, floor

local now = now_us()
local waits = {}
for i, limiter in ipairs(limiters) do
  local at = (i - 1) * 4
  local limit = tonumber(policies[at + 1])
  local wait = 0
  if limit > 0 then
    local state = redis.call('HMGET', limiter, 'tat_us', 'send_us', 'rate', 'cut_us')
    local rate = recovered_rate(limit, state[3], state[4], tonumber(policies[at + 3]),
      tonumber(policies[at + 4]), now)
    local tolerance = (tonumber(policies[at + 2]) - 1) * 1000000 / rate
    -- the later of the next slot and the next send the rate allows (see rate_acquire.lua)
    local next_at = math.max(tonumber(state[1] or '0'), tonumber(state[2] or '0'))
    wait = math.max(0, next_at - tolerance - now)
  end
  waits[i] = math.floor(wait)
end
return waits
