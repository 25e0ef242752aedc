-- Create a record unless the same request exists, and enqueue its task message with it.
-- One round trip, atomic: a record never exists without its message (a transactional outbox).
-- KEYS[1] record hash, KEYS[2] dedupe key, KEYS[3] the queued index, KEYS[4] deadline index,
-- KEYS[5] the Celery queue's Redis list
-- ARGV[1] record id, ARGV[2] index score, ARGV[3] window end in ms ('' if unknown),
-- ARGV[4] the task message ('' to publish separately), ARGV[5..] field/value pairs
local existing = redis.call('GET', KEYS[2])
if existing then
  return {0, existing}
end
local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
end
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[5], ARGV[4])
end
return {1, ARGV[1]}
