-- The shared rate as the workers use it, taking no slot (for stats and metrics).
-- Returns {limit the workers last used ('' if none within the hour), current rate * 1000}.
local limiter = KEYS[1]
local own_limit = tonumber(ARGV[1])     -- this process's settings, where no worker has sent
local own_recovery = tonumber(ARGV[2])
local own_floor = tonumber(ARGV[3])

local state = redis.call('HMGET', limiter, 'rate', 'cut_us', 'limit', 'recovery', 'floor')
local limit = tonumber(state[3] or own_limit)
local recovery = tonumber(state[4] or own_recovery)
local floor = tonumber(state[5] or own_floor)
if limit <= 0 then
  return {state[3] or '', 0}
end
local rate = recovered_rate(limit, state[1], state[2], recovery, floor, now_us())
return {state[3] or '', math.floor(rate * 1000)}
