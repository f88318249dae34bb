-- Pantheon's turn limiter: decide on a turn and, when admitted, log it,
-- take a slot and reserve its tokens, atomically; and the upkeep: apply
-- the refunds that releases marked (in every check and peek), push running
-- leases' expiry (ARGV[1] = 'renew'), report usage (ARGV[1] = 'peek').
--
-- KEYS[1] is the user's active turns (ratelimit:{<user>}:turns:active, a
-- sorted set of lease ids scored by their expiry in ms of the Redis
-- server's clock: lease expiry never depends on an instance's clock).
-- KEYS[2], where a branch needs it, is the user's log
-- (ratelimit:{<user>}:log): every window is read from it exactly, "at most
-- L in any W". It is a list: element 0 a header, struct '>ddddddd': the
-- entries n, the index of the first entry inside the minute, the tokens
-- inside the minute, the tokens of all entries (all are inside the hour),
-- the log's clock, the stamps of the first entry and of the first entry
-- inside the minute (-1: none); then one entry per admitted turn, oldest
-- first, struct '>i6I4': the log time of its admission and the tokens it
-- holds. An entry made at t is inside a window of W ms at now while
-- t > now - W. The log expires an hour after its newest entry.
--
-- This is the model of the domain's `UsageLog`, step for step (a
-- differential test holds them together): the clock never goes back (a
-- check is decided and stamped at max(caller's now, clock)); entries that
-- leave the minute move the minute's start, entries that leave the hour are
-- trimmed from the front; a refund is spread over the entries of its stamp
-- in order, none below zero.
--
-- Check: KEYS: active turns, log. ARGV: 'check', the caller's now ms, lease
-- TTL ms, concurrency cap, lease id, minute limit, hour limit, minute and
-- hour token limits (-1: no budget over that window), the input's tokens,
-- the least and the most output tokens. Admits when fewer than cap leases
-- are unexpired, one more turn fits both turn windows and, under a budget,
-- input + least output fits each budgeted token window; then appends the
-- entry (holding input + output cap, where the cap is the most output that
-- fits every budgeted window, or 0 without a budget) and adds the lease. A
-- refusal logs nothing (it may move the clock and let go of what left).
-- A check with an Idempotency-Key has a third key, its claim
-- (ratelimit:{<user>}:idempotency:<key>), and two more ARGV: the claim
-- ('<turn_id> <fingerprint>') and how long to keep it (ms). Before
-- anything is read or written, a claim found is answered as 'C' .. claim
-- (the retry of a turn: nothing counted, even over a limit); an admission
-- sets it; a refusal leaves the key free.
-- Peek: the same KEYS; ARGV: 'peek', now, the four limits as in a check;
-- it writes only the refunds marked.
-- Both return twelve integers packed as one string (struct TALLY: a bulk
-- reply is one value to parse, an array of twelve is thirteen): admitted,
-- clock, active, output cap, then per window (minute turns, hour turns,
-- minute tokens, hour tokens) its load before the decision, then per
-- window the log time at which the next request fits it (after an
-- admission or in a peek: one more turn or token; after a refusal: this
-- request), -1 for never.
--
-- Release is not a branch: a lease without a refund goes by a plain ZREM;
-- one with a refund is marked in place by a plain `ZADD XX CH`, which
-- changes only a lease still in the set. The mark is the lease's score
-- below zero: -1 - (tokens * 2^23 + stamp mod 2^23), with tokens < 2^30, so
-- it is an exact integer in a double (below 2^53). A mark is no longer a
-- slot (every expiry is above zero) and is a refund owed: the next check
-- under a budget, or peek, applies the refunds marked before anything
-- else moves, as the model applied them at their release, and removes the
-- marks (a check without a budget removes them unapplied). A refund goes
-- only to the entries of its stamp, spread oldest first, none below zero,
-- and not at all once its entry has left the log; a lease that lapsed and
-- went, was released already or was never on this node is not marked, so
-- a retried or late release can never make a user richer. Under a budget
-- the set is kept an hour after an admission (or a lease TTL, if longer),
-- long enough for a mark to wait. The stamp is read back as the one at or below the log's
-- clock with that remainder: exact while a mark is applied within 2^23 ms
-- (2.3 h) of its admission; the actor sends none for an entry older than
-- an hour.
--
-- Renew: KEYS: the active turns; ARGV: 'renew', lease TTL ms, the lease
-- ids. Pushes each lease still in the set, and not released, to now + TTL
-- (one that lapsed stays gone, a mark stays a mark) and the set's own
-- expiry to at least a TTL from now (a mark may need longer).
--
-- Token arithmetic stays exact in Lua's doubles: limits are at most 10^9
-- and a window's tokens never exceed its limit by more than one entry, so
-- every sum is below 2^53, and so is a time in ms.
local HEAD, ENTRY = '>ddddddd', '>i6I4'
local TALLY = '>i8i8i8i8i8i8i8i8i8i8i8i8'
local MIN, HOUR, MARK = 60000, 3600000, 8388608
-- Numbers handed to redis.call go as strings made here: Lua would write a
-- number with '%.14g', a floating-point print that cost a check a tenth of
-- its instructions. '%d' (an integer print) and constants cost next to
-- nothing.
local HOUR_MS, fmt = '3600000', string.format
local branch, active_key, log_key = ARGV[1], KEYS[1], KEYS[2]

if branch == 'renew' then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  local ttl = tonumber(ARGV[2])
  local expiry = fmt('%d', now + ttl)
  for i = 3, #ARGV do
    local score = redis.call('ZSCORE', active_key, ARGV[i])
    if score and tonumber(score) > 0 then redis.call('ZADD', active_key, 'XX', expiry, ARGV[i]) end
  end
  if redis.call('PTTL', active_key) < ttl then redis.call('PEXPIRE', active_key, ARGV[2]) end
  return #ARGV - 2
end

-- The helpers take what they read as arguments and return what they
-- change: a closure that captured the script's changing locals cost more
-- to make, on every call, than most of what it then did.

-- Entries i..j (0-based, inclusive) as {stamp, tokens} pairs, flattened.
local function read(i, j)
  local raw = redis.call('LRANGE', log_key, fmt('%d', i + 1), fmt('%d', j + 1))
  local out = {}
  for k = 1, #raw do
    local at, tokens = struct.unpack(ENTRY, raw[k])
    out[2 * k - 1], out[2 * k] = at, tokens
  end
  return out
end

-- From entry `from` on, in a log of `n` entries at `clock`, what left a
-- window of `w` ms: how many entries, their tokens, and the stamp of the
-- first that stays (-1: none). Read in growing chunks, unpacking only up
-- to the first that stays: at a steady rate one or two entries leave per
-- check.
local function leaving(from, w, n, clock)
  local gone, tokens, head, size = 0, 0, -1, 2
  while from + gone < n and head < 0 do
    local first, last = fmt('%d', from + gone + 1), fmt('%d', math.min(n, from + gone + size))
    local raw = redis.call('LRANGE', log_key, first, last)
    for k = 1, #raw do
      local at, t = struct.unpack(ENTRY, raw[k])
      if at + w > clock then head = at break end
      gone, tokens = gone + 1, tokens + t
    end
    size = size * 4
  end
  return gone, tokens, head
end

-- The earliest log time by which entries worth `need` have left a window
-- of `len` ms (counting tokens, or turns), reading stored entries `i` to
-- `last`, then counting an entry (stamp `xa`, tokens `xt`) about to be made
-- last: `clock` when need <= 0, -1 when never.
local function frees_at(i, last, len, tokens, need, clock, xa, xt)
  if need <= 0 then return clock end
  local freed = 0
  while i <= last do
    local e = read(i, math.min(last, i + 15))
    for k = 1, #e / 2 do
      if tokens then freed = freed + e[2 * k] else freed = freed + 1 end
      if freed >= need then return e[2 * k - 1] + len end
    end
    i = i + 16
  end
  if xa then
    if tokens then freed = freed + xt else freed = freed + 1 end
    if freed >= need then return xa + len end
  end
  return -1
end

local claim_key = KEYS[3]
if claim_key and branch == 'check' then
  local held = redis.call('GET', claim_key)
  if held then return 'C' .. held end
end

-- The header: n, minute start, minute tokens, hour tokens, clock, first
-- stamp, first stamp inside the minute.
local n, ms, mt, ht, clock, hh, mh = 0, 0, 0, 0, -1, -1, -1
local stored = redis.call('LINDEX', log_key, '0')
if stored then n, ms, mt, ht, clock, hh, mh = struct.unpack(HEAD, stored) end

-- The leases, on the Redis server's clock. A check under a budget reads
-- what lapsed and what was marked (see Release) and removes them, the
-- refunds marked applied first, before the clock moves, as the model
-- applied them at their release; a peek does the same with the marks
-- only. A check without a budget removes them unread (no budget, no
-- refund to apply).
local time = redis.call('TIME')
local server = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local upto, marked = fmt('%d', server), nil
if branch == 'peek' then
  upto = '(0'
  marked = redis.call('ZRANGEBYSCORE', active_key, '-inf', upto, 'WITHSCORES')
elseif tonumber(ARGV[8]) >= 0 or tonumber(ARGV[9]) >= 0 then
  marked = redis.call('ZRANGEBYSCORE', active_key, '-inf', upto, 'WITHSCORES')
else
  redis.call('ZREMRANGEBYSCORE', active_key, '-inf', upto)
end
-- A mark's refund goes to the entries of its stamp, found back from the
-- newest (a refund is usually for one of the last few), read in growing
-- chunks and unpacked only down to the first older stamp; it is spread
-- over them oldest first, as the model does. (Inline, not a helper: a
-- closure made on every call costs even the checks that have no mark.)
local refunded = false
if marked and #marked > 0 then
  for p = 2, #marked, 2 do
    local v = -tonumber(marked[p]) - 1
    local left, at = math.floor(v / MARK), clock - (clock - v % MARK) % MARK
    if v >= 0 and left > 0 and n > 0 and at >= hh then
      local idx, tok, size, hi, done = {}, {}, 2, n - 1, false
      while hi >= 0 and not done do
        local lo = math.max(0, hi - size + 1)
        local raw = redis.call('LRANGE', log_key, fmt('%d', lo + 1), fmt('%d', hi + 1))
        for k = #raw, 1, -1 do
          local stamp, tokens = struct.unpack(ENTRY, raw[k])
          if stamp < at then done = true break end
          if stamp == at then idx[#idx + 1], tok[#tok + 1] = lo + k - 1, tokens end
        end
        hi, size = lo - 1, size * 4
      end
      for m = #idx, 1, -1 do
        if left <= 0 then break end
        local taken = math.min(tok[m], left)
        if taken > 0 then
          redis.call('LSET', log_key, fmt('%d', idx[m] + 1), struct.pack(ENTRY, at, tok[m] - taken))
          left, ht, refunded = left - taken, ht - taken, true
          if idx[m] >= ms then mt = mt - taken end
        end
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', active_key, '-inf', upto)
  -- A peek moves nothing else: the refunds are all it writes.
  if refunded and branch == 'peek' then
    redis.call('LSET', log_key, '0', struct.pack(HEAD, n, ms, mt, ht, clock, hh, mh))
  end
end

local was_clock, was_ms = clock, ms
local now = tonumber(ARGV[2])
if now > clock then clock = now end

-- Let go of what left the minute, then of what left the hour (all of it
-- before the minute's start).
if mh >= 0 and mh + MIN <= clock then
  local gone, tokens
  gone, tokens, mh = leaving(ms, MIN, n, clock)
  ms, mt = ms + gone, mt - tokens
end
local trimmed = 0
if hh >= 0 and hh + HOUR <= clock then
  local tokens
  trimmed, tokens, hh = leaving(0, HOUR, n, clock)
  n, ms, ht = n - trimmed, ms - trimmed, ht - tokens
end
if mt < 0 then mt = 0 end
if ht < 0 then ht = 0 end

local ml, hl, tml, thl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local input, least, most = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
if branch == 'peek' then
  ml, hl, tml, thl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  input, least, most = 0, 0, 0
end
local budgeted = tml >= 0 or thl >= 0
local limits = {ml, hl, tml, thl}
local loads = {n - ms, n, mt, ht}
-- Per window, where its entries start in the list as stored (before this
-- call's trim) and its length.
local starts = {ms + trimmed, trimmed, ms + trimmed, trimmed}
local lengths = {MIN, HOUR, MIN, HOUR}
local last = trimmed + n - 1

local active
if branch == 'peek' then
  active = redis.call('ZCOUNT', active_key, fmt('%d', server + 1), '+inf')
  local frees = {}
  for w = 1, 4 do
    if limits[w] >= 0 then
      frees[w] = frees_at(starts[w], last, lengths[w], w > 2, loads[w] + 1 - limits[w], clock)
    else
      frees[w] = clock
    end
  end
  return struct.pack(TALLY, 0, clock, active, 0, loads[1], loads[2], loads[3], loads[4],
    frees[1], frees[2], frees[3], frees[4])
end

active = redis.call('ZCARD', active_key)
local cap = tonumber(ARGV[4])

local admitted = active < cap
local out = 0
if budgeted then out = most end
for w = 1, 4 do
  local limit = limits[w]
  if limit >= 0 then
    local ask = 1
    if w > 2 then
      ask = input + least
      local room = limit - loads[w] - input
      if room < 0 then room = 0 end
      if room < out then out = room end
    end
    if loads[w] + ask > limit then admitted = false end
  end
end
local charge = 0
if budgeted then charge = input + out end

local frees = {}
for w = 1, 4 do
  local limit = limits[w]
  if limit < 0 then
    frees[w] = clock
  elseif admitted then
    local taken = 1
    if w > 2 then taken = charge end
    frees[w] = frees_at(starts[w], last, lengths[w], w > 2, loads[w] + taken + 1 - limit, clock,
      clock, charge)
  else
    local ask = 1
    if w > 2 then ask = input + least end
    frees[w] = frees_at(starts[w], last, lengths[w], w > 2, loads[w] + ask - limit, clock)
  end
end
if admitted then
  if n == 0 then hh = clock end
  if ms == n then mh = clock end
  n, mt, ht = n + 1, mt + charge, ht + charge
end
local header = struct.pack(HEAD, n, ms, mt, ht, clock, hh, mh)
if trimmed > 0 then
  -- The header and the entries that left the hour go; the new header
  -- goes in front of what stays (and of this admission's entry).
  redis.call('LTRIM', log_key, fmt('%d', trimmed + 1), '-1')
  if admitted then redis.call('RPUSH', log_key, struct.pack(ENTRY, clock, charge)) end
  if n > 0 then redis.call('LPUSH', log_key, header) end
  -- A log emptied by the trim is gone (LTRIM deleted it), and one kept
  -- keeps its expiry unless this admission's entry pushes it.
  if admitted then redis.call('PEXPIRE', log_key, HOUR_MS) end
elseif admitted then
  if stored then
    redis.call('LSET', log_key, '0', header)
    redis.call('RPUSH', log_key, struct.pack(ENTRY, clock, charge))
  else
    redis.call('RPUSH', log_key, header, struct.pack(ENTRY, clock, charge))
  end
  redis.call('PEXPIRE', log_key, HOUR_MS)
elseif stored and (refunded or clock ~= was_clock or ms ~= was_ms) then
  -- A refusal logs nothing, but refunds apply and the clock and the
  -- minute's start move on.
  redis.call('LSET', log_key, '0', header)
end
if admitted then
  redis.call('ZADD', active_key, fmt('%d', server + tonumber(ARGV[3])), ARGV[5])
  -- Under a budget kept an hour (or a lease TTL, if longer): long enough
  -- for the marks of releases to wait for the user's next check.
  if budgeted and tonumber(ARGV[3]) < HOUR then
    redis.call('PEXPIRE', active_key, HOUR_MS)
  else
    redis.call('PEXPIRE', active_key, ARGV[3])
  end
  if claim_key then redis.call('SET', claim_key, ARGV[13], 'PX', ARGV[14]) end
end
local verdict = 0
if admitted then verdict = 1 end
return struct.pack(TALLY, verdict, clock, active, out, loads[1], loads[2], loads[3], loads[4],
  frees[1], frees[2], frees[3], frees[4])
