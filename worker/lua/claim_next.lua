-- Take the next ready record for one attempt: the lowest-scored in the ready set (its
-- deadline, so the window that closes first goes first; or, with order=fifo, the oldest),
-- after making due retries ready. Entries that no longer name a record ready to send (taken,
-- finished, gone, a retry not yet due, a running lease) are dropped on the way. A record
-- whose window has closed is handed back as {'window_closed', id} for the caller to expire:
-- no Stripe call, and the caller's rate-limit slot goes to the next record.
-- Returns {'claimed', field, value, ...}, {'window_closed', id} or {'empty'}.
local ready = KEYS[1]                   -- zset: ready record ids by their order
local queued_index = KEYS[2]            -- the status indexes (see keys.index)
local retrying_index = KEYS[3]          -- ...scored by the next attempt's time (ms)
local processing_index = KEYS[4]        -- ...scored by the lease's end (ms)
local record_prefix = ARGV[1]           -- a record's hash is this plus its id
local now = tonumber(ARGV[2])           -- ms
local lease_until_ms = ARGV[3]
local lease_token = ARGV[4]
local now_iso = ARGV[5]
local retry_early_ms = tonumber(ARGV[6])
local order = ARGV[7]                   -- 'deadline' or 'fifo'
local PROMOTE = 100                     -- due retries made ready per call, at most
local SCAN = 100                        -- entries looked at per call, at most

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
  if not redis.call('ZSCORE', ready, id) then
    local score = due_ms
    if order == 'deadline' then
      score = deadline_of(record_prefix .. id, now)
    end
    redis.call('ZADD', ready, score, id)
  end
end

for _ = 1, SCAN do
  local first = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if #first == 0 then
    return {'empty'}
  end
  local id = first[1]
  local fallback = nil
  if order == 'deadline' then
    fallback = tonumber(first[2])
  end
  redis.call('ZREM', ready, id)
  local rec = record_prefix .. id
  local status = redis.call('HGET', rec, 'status')
  local take = status == 'queued'
  if status == 'retrying' then
    local next_ms = tonumber(redis.call('HGET', rec, 'next_attempt_ms') or '0') or 0
    take = next_ms <= now + retry_early_ms
  elseif status == 'processing' then  -- put back by reconciliation after a worker died
    local lease = tonumber(redis.call('HGET', rec, 'lease_until_ms') or '0') or 0
    take = lease <= now
  end
  if take then
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
    local out = {'claimed'}
    local all = redis.call('HGETALL', rec)
    for i = 1, #all do
      out[#out + 1] = all[i]
    end
    return out
  end
end
return {'empty'}
