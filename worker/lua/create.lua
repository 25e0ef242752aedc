-- Create a record unless the same request exists. One round trip, atomic.
-- KEYS[1] record hash, KEYS[2] dedupe key, KEYS[3] the queued index
-- ARGV[1] record id, ARGV[2] index score, ARGV[3..] field/value pairs
local existing = redis.call('GET', KEYS[2])
if existing then
  return {0, existing}
end
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return {1, ARGV[1]}
