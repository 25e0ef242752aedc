-- Move a record to a new status, atomically with its indexes and history; refuse illegal moves.
-- Returns {reason, status before}: reason 'ok', or why nothing changed: 'missing', 'refused'
-- (its status is not one of the allowed), 'lost_lease' (another claim holds it), 'leased'
-- (processing under a running lease).
local rec = KEYS[1]                 -- the record hash
local dedupe_key = KEYS[2]
local history_key = KEYS[3]
local deadline_index = KEYS[4]
local ready = KEYS[5]               -- ready records, by the order they are sent in
local index_prefix = ARGV[1]        -- status index keys are this plus the status
local allowed_from = ARGV[2]        -- comma-separated statuses
local new_status = ARGV[3]
local index_score = ARGV[4]
local lease_token = ARGV[5]         -- must match ('' for none)
local retention_s = tonumber(ARGV[6])   -- 0: keep forever (non-terminal statuses)
local drop_below = ARGV[7]          -- drop index entries scored below this (terminal only)
local unless_leased_at = ARGV[8]    -- now in ms: refuse a running lease ('' to skip)
local history_entry = ARGV[9]       -- '' for none
local history_cap = tonumber(ARGV[10])
local ready_score = ARGV[11]        -- the record's place among the ready ('' : not ready)
local unless_field = ARGV[12]       -- refuse if the record has this field set ('' to skip)
local FIELDS_FROM = 13              -- ARGV[13..]: field/value pairs to set
local fields = {'status', new_status}
for i = FIELDS_FROM, #ARGV do
  fields[#fields + 1] = ARGV[i]
end

local status = redis.call('HGET', rec, 'status')
if not status then
  return {'missing', ''}
end
local allowed = false
for s in string.gmatch(allowed_from, '[^,]+') do
  if s == status then
    allowed = true
  end
end
if not allowed then
  return {'refused', status}
end
if unless_field ~= '' and (redis.call('HGET', rec, unless_field) or '') ~= '' then
  return {'refused', status}
end
if lease_token ~= '' and redis.call('HGET', rec, 'lease_token') ~= lease_token then
  return {'lost_lease', status}
end
if unless_leased_at ~= '' and status == 'processing' then
  local lease = tonumber(redis.call('HGET', rec, 'lease_until_ms') or '0') or 0
  if lease > tonumber(unless_leased_at) then
    return {'leased', status}
  end
end
local id = redis.call('HGET', rec, 'id')
redis.call('HSET', rec, unpack(fields))
if new_status ~= 'processing' then
  redis.call('HDEL', rec, 'lease_token', 'lease_until_ms')
end
redis.call('ZREM', index_prefix .. status, id)
redis.call('ZADD', index_prefix .. new_status, index_score, id)
if ready_score ~= '' then
  redis.call('ZADD', ready, ready_score, id)
else
  redis.call('ZREM', ready, id)
end
if history_entry ~= '' then
  redis.call('RPUSH', history_key, history_entry)
  redis.call('LTRIM', history_key, -history_cap, -1)
end
if retention_s > 0 then
  redis.call('EXPIRE', rec, retention_s)
  redis.call('EXPIRE', dedupe_key, retention_s)
  redis.call('EXPIRE', history_key, retention_s)
  redis.call('ZREM', deadline_index, id)
  redis.call('ZREMRANGEBYSCORE', index_prefix .. new_status, '-inf', '(' .. drop_below)
else
  redis.call('PERSIST', rec)
  redis.call('PERSIST', dedupe_key)
  redis.call('PERSIST', history_key)
  local expires = redis.call('HGET', rec, 'expires_at_ms')
  if expires and expires ~= '' then
    redis.call('ZADD', deadline_index, expires, id)
  else
    redis.call('ZREM', deadline_index, id)
  end
end
return {'ok', status}
