-- Take the next ready record of one platform for one attempt: the lowest-scored in its ready
-- set (its deadline, so the window that closes first goes first; or, with order=fifo, the
-- oldest), after making due retries (of every platform) ready. The message's own record (the hint) is taken instead when
-- it is ready and its deadline is within `tolerance_ms` of the first one (a trace then
-- continues in the attempt of its own request). Entries that no longer name a record ready
-- to send (taken, finished, gone, a retry not yet due, a running lease) are dropped on the
-- way. A record whose window has closed is handed back as {'window_closed', id} for the
-- caller to expire: no Stripe call, and the caller's rate-limit slot goes to the next record.
-- The same call sent again (its answer lost with a dropped connection) gets the record it
-- claimed the first time: the claim key remembers it for the lease.
-- Returns {'claimed', field, value, ...}, {'window_closed', id} or {'empty'}.
local ready = KEYS[1]                   -- zset: one platform's ready record ids by their order
local queued_index = KEYS[2]            -- the status indexes (see keys.index)
local retrying_index = KEYS[3]          -- ...scored by the next attempt's time (ms)
local processing_index = KEYS[4]        -- ...scored by the lease's end (ms)
local claim_key = KEYS[5]               -- this call's claim: the record id it took
local record_prefix = ARGV[1]           -- a record's hash is this plus its id
local now = tonumber(ARGV[2])           -- ms
local lease_until_ms = ARGV[3]
local lease_token = ARGV[4]
local now_iso = ARGV[5]
local retry_early_ms = tonumber(ARGV[6])
local order = ARGV[7]                   -- 'deadline' or 'fifo'
local hint = ARGV[8]                    -- the message's own record id ('' for none)
local tolerance_ms = tonumber(ARGV[9])
local ready_base = ARGV[10]             -- the unnamed ready set; a platform's adds ':' .. name
local PROMOTE = 100                     -- due retries made ready per call, at most
local SCAN = 100                        -- entries looked at per call, at most

local function claimed(rec)
  local out = {'claimed'}
  local all = redis.call('HGETALL', rec)
  for i = 1, #all do
    out[#out + 1] = all[i]
  end
  return out
end

local mine = redis.call('GET', claim_key)
if mine then
  local rec = record_prefix .. mine
  if redis.call('HGET', rec, 'lease_token') == lease_token then
    return claimed(rec)
  end
end

-- A record's deadline: its window's end when the receipt time was given, else the one kept
-- while it retries, else (a queued record, deadline order) its ready score.
local function deadline_of(rec, fallback)
  return tonumber(redis.call('HGET', rec, 'expires_at_ms') or '')
    or tonumber(redis.call('HGET', rec, 'deadline_ms') or '') or fallback
end

local due = redis.call('ZRANGEBYSCORE', retrying_index, '-inf', now + retry_early_ms,
  'WITHSCORES', 'LIMIT', 0, PROMOTE)
for i = 1, #due, 2 do
  local id, due_ms = due[i], due[i + 1]
  local rec = record_prefix .. id
  local platform = redis.call('HGET', rec, 'platform') or ''
  local its_ready = ready_base
  if platform ~= '' then
    its_ready = ready_base .. ':' .. platform
  end
  if not redis.call('ZSCORE', its_ready, id) then
    local score = due_ms
    if order == 'deadline' then
      score = deadline_of(rec, now)
    end
    redis.call('ZADD', its_ready, score, id)
  end
end

-- Take `id` (already out of the ready set) if it is ready to send; nil if not.
local function take(id, score)
  local rec = record_prefix .. id
  local status = redis.call('HGET', rec, 'status')
  local ok = status == 'queued'
  if status == 'retrying' then
    local next_ms = tonumber(redis.call('HGET', rec, 'next_attempt_ms') or '0') or 0
    ok = next_ms <= now + retry_early_ms
  elseif status == 'processing' then  -- put back by reconciliation after a worker died
    local lease = tonumber(redis.call('HGET', rec, 'lease_until_ms') or '0') or 0
    ok = lease <= now
  end
  if not ok then
    return nil
  end
  local fallback = nil
  if order == 'deadline' then
    fallback = score
  end
  local expires = deadline_of(rec, fallback)
  if expires and expires <= now then
    return {'window_closed', id}
  end
  redis.call('HSET', rec, 'status', 'processing', 'lease_token', lease_token,
    'lease_until_ms', lease_until_ms, 'updated_at', now_iso)
  redis.call('HINCRBY', rec, 'attempts', 1)
  redis.call('ZREM', queued_index, id)
  redis.call('ZREM', retrying_index, id)
  redis.call('ZADD', processing_index, lease_until_ms, id)
  redis.call('SET', claim_key, id, 'PX', math.max(1, tonumber(lease_until_ms) - now))
  return claimed(rec)
end

if hint ~= '' then
  local hinted = tonumber(redis.call('ZSCORE', ready, hint) or '')
  local first = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if hinted and #first > 0 and hinted <= tonumber(first[2]) + tolerance_ms then
    redis.call('ZREM', ready, hint)
    local reply = take(hint, hinted)
    if reply then
      return reply
    end
  end
end

for _ = 1, SCAN do
  local first = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if #first == 0 then
    return {'empty'}
  end
  local id = first[1]
  redis.call('ZREM', ready, id)
  local reply = take(id, tonumber(first[2]))
  if reply then
    return reply
  end
end
return {'empty'}
