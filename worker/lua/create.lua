-- Create a record unless the same request exists, and enqueue its task message with it.
-- One round trip, atomic: a record never exists without its message (a transactional outbox).
-- Returns {1, record id} when created, {0, the existing record's id} for a duplicate.
local record_key = KEYS[1]
local dedupe_key = KEYS[2]
local queued_index = KEYS[3]
local deadline_index = KEYS[4]
local queue_list = KEYS[5]       -- the Celery queue's Redis list
local ready = KEYS[6]            -- ready records, by the order they are sent in
local record_id = ARGV[1]
local index_score = ARGV[2]
local window_end_ms = ARGV[3]    -- received + 24 h ('' if not given)
local task_message = ARGV[4]     -- '' to publish separately
local ready_score = ARGV[5]      -- its place among the ready: its deadline (received + 24 h,
                                 -- or created + 24 h), or with order=fifo its creation
local FIELDS_FROM = 6            -- ARGV[6..]: field/value pairs of the record hash
local fields = {}
for i = FIELDS_FROM, #ARGV do
  fields[#fields + 1] = ARGV[i]
end

local existing = redis.call('GET', dedupe_key)
if existing then
  return {0, existing}
end
redis.call('HSET', record_key, unpack(fields))
redis.call('SET', dedupe_key, record_id)
redis.call('ZADD', queued_index, index_score, record_id)
if window_end_ms ~= '' then
  redis.call('ZADD', deadline_index, window_end_ms, record_id)
end
redis.call('ZADD', ready, ready_score, record_id)
if task_message ~= '' then
  redis.call('LPUSH', queue_list, task_message)
end
return {1, record_id}
