-- Move a record to a new status, atomically with its indexes and history; refuse illegal moves.
-- KEYS[1] record hash, KEYS[2] dedupe key, KEYS[3] history list, KEYS[4] deadline index
-- ARGV[1] index key prefix, ARGV[2] allowed current statuses (comma-separated), ARGV[3] new status,
-- ARGV[4] index score, ARGV[5] lease token that must match ('' for none),
-- ARGV[6] retention in s (0: keep forever, for non-terminal statuses),
-- ARGV[7] drop index entries scored below this (terminal only),
-- ARGV[8] now in ms: refuse a 'processing' record whose lease is still running ('' to skip),
-- ARGV[9] history entry ('' for none), ARGV[10] history cap, ARGV[11..] field/value pairs
local rec = KEYS[1]
local status = redis.call('HGET', rec, 'status')
if not status then
  return {'missing', ''}
end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do
  if s == status then
    allowed = true
  end
end
if not allowed then
  return {'refused', status}
end
if ARGV[5] ~= '' and redis.call('HGET', rec, 'lease_token') ~= ARGV[5] then
  return {'lost_lease', status}
end
if ARGV[8] ~= '' and status == 'processing' then
  local lease = tonumber(redis.call('HGET', rec, 'lease_until_ms') or '0') or 0
  if lease > tonumber(ARGV[8]) then
    return {'leased', status}
  end
end
local id = redis.call('HGET', rec, 'id')
local fields = {'status', ARGV[3]}
for i = 11, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', rec, unpack(fields))
if ARGV[3] ~= 'processing' then
  redis.call('HDEL', rec, 'lease_token', 'lease_until_ms')
end
redis.call('ZREM', ARGV[1] .. status, id)
redis.call('ZADD', ARGV[1] .. ARGV[3], ARGV[4], id)
if ARGV[9] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[9])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[10]), -1)
end
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  redis.call('EXPIRE', rec, ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZREMRANGEBYSCORE', ARGV[1] .. ARGV[3], '-inf', '(' .. ARGV[7])
else
  redis.call('PERSIST', rec)
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
  local expires = redis.call('HGET', rec, 'expires_at_ms')
  if expires and expires ~= '' then
    redis.call('ZADD', KEYS[4], expires, id)
  else
    redis.call('ZREM', KEYS[4], id)
  end
end
return {'ok', status}
