-- Take a record for one attempt: queued, due retrying, or processing with a lapsed lease.
-- Returns {'claimed', field, value, ...} or {reason[, status]}.
local rec = KEYS[1]                     -- the record hash
local ready_base = KEYS[2]              -- the unnamed ready set; a platform's adds ':' .. name
local index_prefix = ARGV[1]            -- status index keys are this plus the status
local now = tonumber(ARGV[2])           -- ms
local lease_until_ms = ARGV[3]
local lease_token = ARGV[4]
local now_iso = ARGV[5]
local retry_early_ms = tonumber(ARGV[6])  -- how early a retry may run

local status = redis.call('HGET', rec, 'status')
if not status then
  return {'missing'}
end

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
  if redis.call('HGET', rec, 'lease_token') == lease_token then
    -- Our own claim, sent again after its answer was lost (the client retries on a dropped
    -- connection): hand back the record, without a second attempt counted.
    return claimed()
  end
  if lease > now then
    return {'leased'}
  end
elseif status == 'retrying' then
  local due = tonumber(redis.call('HGET', rec, 'next_attempt_ms') or '0') or 0
  if due > now + retry_early_ms then
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
redis.call('HSET', rec, 'status', 'processing', 'lease_token', lease_token,
  'lease_until_ms', lease_until_ms, 'updated_at', now_iso)
redis.call('HINCRBY', rec, 'attempts', 1)
redis.call('ZREM', index_prefix .. status, id)
redis.call('ZADD', index_prefix .. 'processing', lease_until_ms, id)
local platform = redis.call('HGET', rec, 'platform') or ''
if platform ~= '' then
  ready_base = ready_base .. ':' .. platform
end
redis.call('ZREM', ready_base, id)
return claimed()
