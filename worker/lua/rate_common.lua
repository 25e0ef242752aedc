-- Shared by the rate scripts (lua.load prepends it): the one definition of the shared
-- rate after a cut. It climbs back linearly at `recovery` req/s per second from the rate the
-- last cut left, up to the configured `limit`, and never goes below `floor`.
local function recovered_rate(limit, cut_rate, cut_us, recovery, floor, now_us)
  local rate = limit
  if cut_rate then
    rate = math.min(limit, tonumber(cut_rate) + recovery * (now_us - tonumber(cut_us)) / 1000000)
  end
  return math.max(rate, floor)
end

-- The Redis server's clock, in microseconds.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
