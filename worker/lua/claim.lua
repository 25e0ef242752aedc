-- Take a record for one attempt: queued, due retrying, or processing with a lapsed lease.
-- KEYS[1] record hash
-- ARGV[1] index key prefix, ARGV[2] now (ms), ARGV[3] lease end (ms), ARGV[4] lease token,
-- ARGV[5] now (ISO), ARGV[6] how early a retry may run (ms)
local rec = KEYS[1]
local status = redis.call('HGET', rec, 'status')
if not status then
  return {'missing'}
end
local now = tonumber(ARGV[2])

-- {'claimed', field, value, ...}: the record as it now stands.
local function claimed()
  local out = {'claimed'}
  local all = redis.call('HGETALL', rec)
  for i = 1, #all do
    out[#out + 1] = all[i]
  end
  return out
end

if status == 'processing' then
  local lease = tonumber(redis.call('HGET', rec, 'lease_until_ms') or '0') or 0
  if redis.call('HGET', rec, 'lease_token') == ARGV[4] then
    -- Our own claim, sent again after its answer was lost (the client retries on a dropped
    -- connection): hand back the record, without a second attempt counted.
    return claimed()
  end
  if lease > now then
    return {'leased'}
  end
elseif status == 'retrying' then
  local due = tonumber(redis.call('HGET', rec, 'next_attempt_ms') or '0') or 0
  if due > now + tonumber(ARGV[6]) then
    return {'not_due'}
  end
elseif status ~= 'queued' then
  return {'terminal', status}
end
local expires = tonumber(redis.call('HGET', rec, 'expires_at_ms') or '')
if expires and expires <= now then
  return {'window_closed', status}
end
local id = redis.call('HGET', rec, 'id')
redis.call('HSET', rec, 'status', 'processing', 'lease_token', ARGV[4],
  'lease_until_ms', ARGV[3], 'updated_at', ARGV[5])
redis.call('HINCRBY', rec, 'attempts', 1)
redis.call('ZREM', ARGV[1] .. status, id)
redis.call('ZADD', ARGV[1] .. 'processing', ARGV[3], id)
return claimed()
