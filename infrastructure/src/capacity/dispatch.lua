-- Pantheon's provider capacity, shared by every instance: the slots in
-- flight, the minute's tokens, the waiting tickets in fair order (VTC) and
-- each user's virtual counter. One call per store operation, atomic. The
-- in-process store (memory.rs) is this script step for step.
--
-- KEYS, all under one prefix P carrying a hash tag (one cluster slot):
--  1 P:flight   ZSET ticket -> expiry ms (slots in flight)
--  2 P:held     HASH ticket -> "weight cost deadline user" of each in flight
--  3 P:waiting  ZSET ticket -> min(alive-until, deadline) ms
--  4 P:tickets  HASH ticket -> "weight cost deadline user" of each waiting
--  5 P:backlog  ZSET user -> counter, the users with a ticket waiting
--  6 P:counters HASH user -> counter (tokens served / weight), kept
--  7 P:minute   ZSET ticket -> dispatch ms (kept under tokens_per_minute)
--  8 P:costs    HASH ticket -> the tokens it counts in the minute
--  9 P:state    HASH eff (effective concurrency), decreased (ms of the
--               last halving), floor (the last dispatched user's counter
--               before its charge), seq (arrival numbers), sum (the
--               minute's tokens)
-- 10 P:fifo     ZSET ticket -> seq, every waiting ticket (Fifo order only)
-- and, per user, P:q:<user> ZSET ticket -> seq: the user's waiting tickets.
--
-- ARGV: 1 op, 2 now ms (the caller's clock, never Redis's), 3
-- max_concurrent (-1: none), 4 tokens_per_minute (-1: none), 5 ttl ms, 6
-- order ('fair' | 'fifo'), 7 P, 8 the grants channel; then per op:
--   enqueue  id user weight cost deadline  -> {place or -1, granted ids...}
--   finish   (id used outcome)...          -> {granted ids...}
--            outcome: s served, t throttled, u unused
--   renew    id...                         -> {granted ids...}
--   place    user                          -> place or -1
--   stats                                  -> {queued, in flight, eff or '', tokens}
-- Every mutating op first drops what expired (a slot or a waiting ticket
-- at or past its score, a minute entry at or before now - 60000), ends by
-- dispatching, and publishes the ids it granted (comma-separated).
-- Numbers are stored with '%.17g', so a counter reads back exactly.

local flight, held, waiting, tickets = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local backlog, counters, minute, costs = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local state, fifo_key = KEYS[9], KEYS[10]

local op, now = ARGV[1], tonumber(ARGV[2])
local max, tpm, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fifo, prefix, channel = ARGV[6] == 'fifo', ARGV[7], ARGV[8]

local function num(x) return string.format('%.17g', x) end
local function queue(user) return prefix .. ':q:' .. user end

-- "weight cost deadline user" (the user last: nothing after it to split)
local function parse(rec)
  local w, c, d, u = string.match(rec, '^(%S+) (%S+) (%S+) (.*)$')
  return tonumber(w), tonumber(c), tonumber(d), u
end

local function counter(user) return tonumber(redis.call('HGET', counters, user)) or 0 end

-- Sets a counter, and the user's score in the backlog if it is there.
local function set_counter(user, c)
  redis.call('HSET', counters, user, num(c))
  redis.call('ZADD', backlog, 'XX', num(c), user)
end

local function drop_waiting(id)
  local rec = redis.call('HGET', tickets, id)
  if not rec then return nil end
  local _, _, _, user = parse(rec)
  redis.call('HDEL', tickets, id)
  redis.call('ZREM', waiting, id)
  redis.call('ZREM', fifo_key, id)
  redis.call('ZREM', queue(user), id)
  if redis.call('ZCARD', queue(user)) == 0 then redis.call('ZREM', backlog, user) end
  return rec
end

local st = redis.call('HMGET', state, 'eff', 'decreased', 'floor', 'sum')
local eff = tonumber(st[1]) or max
if max >= 0 then eff = math.min(eff, max) end
local decreased, floor, sum = tonumber(st[2]), tonumber(st[3]) or 0, tonumber(st[4]) or 0

local function save()
  redis.call('HSET', state, 'floor', num(floor), 'sum', num(sum))
  if max >= 0 then redis.call('HSET', state, 'eff', num(eff)) end
  if decreased then redis.call('HSET', state, 'decreased', num(decreased)) end
end

local function purge()
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', flight, '-inf', num(now))) do
    redis.call('ZREM', flight, id)
    redis.call('HDEL', held, id)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', num(now))) do
    drop_waiting(id)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', minute, '-inf', num(now - 60000))) do
    sum = math.max(0, sum - (tonumber(redis.call('HGET', costs, id)) or 0))
    redis.call('ZREM', minute, id)
    redis.call('HDEL', costs, id)
  end
end

-- The next waiting ticket's id, or nil.
local function next_ticket()
  if fifo then return redis.call('ZRANGE', fifo_key, 0, 0)[1] end
  local head = redis.call('ZRANGE', backlog, 0, 0, 'WITHSCORES')
  if not head[1] then return nil end
  -- Among the users tied at the smallest counter (a user who starts
  -- waiting is lifted to it), the one whose next ticket costs least; then
  -- the first by user id. At most 16 are weighed.
  local best, least
  for _, user in ipairs(redis.call('ZRANGEBYSCORE', backlog, head[2], head[2], 'LIMIT', 0, 16)) do
    local id = redis.call('ZRANGE', queue(user), 0, 0)[1]
    local rec = id and redis.call('HGET', tickets, id)
    if rec then
      local _, c = parse(rec)
      if not least or c < least then best, least = id, c end
    end
  end
  return best
end

local function dispatch()
  local granted = {}
  local slots = math.max(1, math.floor(eff))
  local in_flight = redis.call('ZCARD', flight)
  while max < 0 or in_flight < slots do
    local id = next_ticket()
    if not id then break end
    local rec = redis.call('HGET', tickets, id)
    if not rec then break end -- never: a queued id has its figures
    local w, c, d, user = parse(rec)
    if d <= now then
      drop_waiting(id)
    else
      if tpm >= 0 and sum > 0 and sum + c > tpm then break end
      drop_waiting(id)
      redis.call('HSET', held, id, rec)
      redis.call('ZADD', flight, num(now + ttl), id)
      if tpm >= 0 then
        redis.call('ZADD', minute, num(now), id)
        redis.call('HSET', costs, id, num(c))
        sum = sum + c
      end
      floor = counter(user)
      set_counter(user, floor + c / w)
      in_flight = in_flight + 1
      granted[#granted + 1] = id
    end
  end
  save()
  if #granted > 0 then redis.call('PUBLISH', channel, table.concat(granted, ',')) end
  return granted
end

local function place_of(id, user)
  if fifo then
    local rank = redis.call('ZRANK', fifo_key, id)
    return rank and rank + 1 or -1
  end
  local ahead = redis.call('ZRANK', backlog, user)
  local own = redis.call('ZRANK', queue(user), id)
  if not ahead or not own then return -1 end
  return 1 + ahead + own
end

if op == 'enqueue' then
  purge()
  local id, user = ARGV[9], ARGV[10]
  local weight, cost, deadline = math.max(1, tonumber(ARGV[11])), tonumber(ARGV[12]), tonumber(ARGV[13])
  local known = redis.call('ZSCORE', flight, id) or redis.call('HEXISTS', tickets, id) == 1
  if not known and deadline > now then
    if redis.call('ZCARD', queue(user)) == 0 then
      local head = redis.call('ZRANGE', backlog, 0, 0, 'WITHSCORES')
      local base = head[2] and tonumber(head[2]) or floor
      local c = math.max(counter(user), base)
      redis.call('HSET', counters, user, num(c))
      redis.call('ZADD', backlog, num(c), user)
    end
    local seq = redis.call('HINCRBY', state, 'seq', 1)
    redis.call('ZADD', queue(user), seq, id)
    redis.call('HSET', tickets, id, num(weight) .. ' ' .. num(cost) .. ' ' .. num(deadline) .. ' ' .. user)
    redis.call('ZADD', waiting, num(math.min(now + ttl, deadline)), id)
    if fifo then redis.call('ZADD', fifo_key, seq, id) end
  end
  local granted = dispatch()
  local place = -1
  if redis.call('HEXISTS', tickets, id) == 1 then place = place_of(id, user) end
  table.insert(granted, 1, num(place))
  return granted
end

if op == 'finish' then
  purge()
  for i = 9, #ARGV - 2, 3 do
    local id, used, outcome = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
    local rec = redis.call('HGET', held, id)
    if redis.call('ZREM', flight, id) == 0 then
      drop_waiting(id)
    elseif rec then
      redis.call('HDEL', held, id)
      local w, c, _, user = parse(rec)
      local delta = used - c
      set_counter(user, math.max(0, counter(user) + delta / w))
      local charged = tonumber(redis.call('HGET', costs, id))
      if charged then
        local corrected = math.max(0, charged + delta)
        sum = math.max(0, sum + corrected - charged)
        redis.call('HSET', costs, id, num(corrected))
      end
      if max >= 0 then
        if outcome == 't' then
          if not decreased or now - decreased >= 1000 then
            eff = eff / 2
            decreased = now
          end
          -- The upstream refused one more than those still in flight.
          eff = math.max(1, math.min(eff, redis.call('ZCARD', flight)))
        elseif outcome == 's' then
          eff = math.min(max, eff + 1 / eff)
        end
      end
    end
  end
  return dispatch()
end

if op == 'renew' then
  purge()
  for i = 9, #ARGV do
    local id = ARGV[i]
    if redis.call('ZSCORE', flight, id) then
      redis.call('ZADD', flight, num(now + ttl), id)
    else
      local rec = redis.call('HGET', tickets, id)
      if rec then
        local _, _, d = parse(rec)
        redis.call('ZADD', waiting, num(math.min(now + ttl, d)), id)
      end
    end
  end
  return dispatch()
end

if op == 'place' then
  local user = ARGV[9]
  local first = redis.call('ZRANGE', queue(user), 0, 0)[1]
  if not first then return -1 end
  return place_of(first, user)
end

if op == 'stats' then
  local queued = redis.call('ZCOUNT', waiting, '(' .. num(now), '+inf')
  local in_flight = redis.call('ZCOUNT', flight, '(' .. num(now), '+inf')
  local tokens = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', minute, '(' .. num(now - 60000), '+inf')) do
    tokens = tokens + (tonumber(redis.call('HGET', costs, id)) or 0)
  end
  local effective = ''
  if max >= 0 then effective = num(eff) end
  return {queued, in_flight, effective, num(tokens)}
end

return redis.error_reply('unknown op ' .. tostring(op))
