-- Release a lock only if we still hold it.
local lock_key = KEYS[1]
local our_token = ARGV[1]

if redis.call('GET', lock_key) == our_token then
  return redis.call('DEL', lock_key)
end
return 0
