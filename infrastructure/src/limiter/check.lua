-- Pantheon's turn limiter: check, then count, take a slot and reserve
-- tokens, atomically; and the lease upkeep: give slots and unused tokens
-- back (ARGV[1] = 'release'), push running leases' expiry (ARGV[1] =
-- 'renew'), count the live leases (ARGV[1] = 'count').
--
-- Lease expiry is on the Redis server's clock (TIME), never the caller's:
-- instances whose clocks disagree never drop each other's live leases. The
-- window counters' buckets still follow the caller's clock (its window
-- indexes and elapsed times).
--
-- Release: KEYS: the active turns, then the m token counters to refund;
-- ARGV: 'release', the number n of leases, then per lease its id and the
-- tokens to take off each of the m counters (0: none). A lease's refund is
-- applied only when its ZREM removed it: a lease that is not there (it
-- lapsed, was released already, or this node never saw it — a failover to
-- a replica that missed it) refunds nothing, so a retried or late release
-- can never make a user richer. A refund never makes a key (one made anew
-- would live without a TTL) and never takes a counter below zero. Returns
-- per lease 1 (removed) or 0.
--
-- Renew: KEYS: the active turns; ARGV: 'renew', lease TTL ms, the lease
-- ids. Pushes each lease still in the set to now + TTL (one that lapsed
-- stays gone) and the set's own expiry to a TTL from now.
--
-- Count: KEYS: the active turns; ARGV: 'count'. The leases not expired
-- (read-only).
--
-- Check:
-- KEYS: minute current, minute previous, hour current, hour previous
--       (ratelimit:{<user>}:turns:<bucket>:<window index>), the active
--       turns (ratelimit:{<user>}:turns:active, a sorted set of lease ids
--       scored by their expiry in ms of the Redis server's clock), and,
--       under a token budget only, the tokens charged: minute current,
--       minute previous, hour current, hour previous
--       (ratelimit:{<user>}:tokens:<bucket>:<window index>).
-- ARGV: minute limit, minute window ms, minute elapsed ms,
--       hour limit,   hour window ms,   hour elapsed ms,
--       lease TTL ms, concurrency cap, lease id,
--       and with the token keys: minute token limit, hour token limit (-1:
--       no budget over that window), the input's tokens, the least and the
--       most output tokens.
-- Drops expired leases, then admits when fewer than cap leases remain,
-- p*(W-e) + (c+1)*W <= L*W holds for both windows and, under a budget,
-- p*(W-e) + (c+k)*W <= L*W holds with k = input + least output in each
-- token window with a limit; only then increments both current counters (a
-- new counter expires 2W-e ms later: the end of the next window, when it
-- stops being anyone's "previous"), adds the lease, expiring at now + TTL
-- (the set itself expires a TTL after its newest lease, so a user whose
-- instances all died leaves nothing behind), and adds input + output cap to
-- each budgeted current token counter, where the output cap is the most
-- output, the largest k - input that fits every token window. A refusal
-- changes nothing.
-- Returns {admitted (0|1), minute current, minute previous, hour current,
-- hour previous, active} and, with the token keys, {token minute current,
-- previous, token hour current, previous, output cap}, all as read before
-- any change: the application computes remaining, free slots, retry times
-- and the reservation from them with the same arithmetic.
--
-- Written for the cost of every admitted turn: one MGET instead of four
-- (or eight) GETs, and no functions defined per call (each redis.call and
-- each closure is work Redis does under its one thread). Token arithmetic
-- stays exact in Lua's doubles: limits are at most 10^9, so every product
-- is below 2^53, and so is the server's time in ms.
if ARGV[1] == 'release' then
  local n, m = tonumber(ARGV[2]), #KEYS - 1
  local removed = {}
  for i = 0, n - 1 do
    local at = 3 + i * (m + 1)
    local gone = redis.call('ZREM', KEYS[1], ARGV[at])
    removed[i + 1] = gone
    if gone == 1 then
      for j = 1, m do
        local tokens = tonumber(ARGV[at + j])
        if tokens > 0 then
          local left = tonumber(redis.call('GET', KEYS[1 + j]) or 0)
          if left > 0 then redis.call('DECRBY', KEYS[1 + j], math.min(tokens, left)) end
        end
      end
    end
  end
  return removed
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if ARGV[1] == 'renew' then
  local ttl = tonumber(ARGV[2])
  for i = 3, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i]) end
  redis.call('PEXPIRE', KEYS[1], ttl)
  return #ARGV - 2
end
if ARGV[1] == 'count' then
  return redis.call('ZCOUNT', KEYS[1], now + 1, '+inf')
end
local ml, mw, me = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hl, hw, he = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl, cap = tonumber(ARGV[7]), tonumber(ARGV[8])
if #KEYS == 5 then
  local v = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  local mc, mp = tonumber(v[1] or 0), tonumber(v[2] or 0)
  local hc, hp = tonumber(v[3] or 0), tonumber(v[4] or 0)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  local active = redis.call('ZCARD', KEYS[5])
  if active < cap and mp * (mw - me) + (mc + 1) * mw <= ml * mw
      and hp * (hw - he) + (hc + 1) * hw <= hl * hw then
    if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], 2 * mw - me) end
    if redis.call('INCR', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], 2 * hw - he) end
    redis.call('ZADD', KEYS[5], now + ttl, ARGV[9])
    redis.call('PEXPIRE', KEYS[5], ttl)
    return {1, mc, mp, hc, hp, active}
  end
  return {0, mc, mp, hc, hp, active}
end
local v = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
local mc, mp = tonumber(v[1] or 0), tonumber(v[2] or 0)
local hc, hp = tonumber(v[3] or 0), tonumber(v[4] or 0)
local tmc, tmp = tonumber(v[5] or 0), tonumber(v[6] or 0)
local thc, thp = tonumber(v[7] or 0), tonumber(v[8] or 0)
local tml, thl = tonumber(ARGV[10]), tonumber(ARGV[11])
local input, least, out = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local fits = true
-- The output room of each budgeted window: floor((L*W - p*(W-e)) / W) - c
-- - input, the division checked back by multiplication; it must hold the
-- least output, and the cap is the smallest room (at most the most output).
if tml >= 0 then
  local x = tml * mw - tmp * (mw - me)
  local r = math.floor(x / mw)
  if r * mw > x then r = r - 1 elseif (r + 1) * mw <= x then r = r + 1 end
  r = r - tmc - input
  if r < least then fits = false end
  if r < out then out = r end
end
if thl >= 0 then
  local x = thl * hw - thp * (hw - he)
  local r = math.floor(x / hw)
  if r * hw > x then r = r - 1 elseif (r + 1) * hw <= x then r = r + 1 end
  r = r - thc - input
  if r < least then fits = false end
  if r < out then out = r end
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local active = redis.call('ZCARD', KEYS[5])
if active < cap and fits and mp * (mw - me) + (mc + 1) * mw <= ml * mw
    and hp * (hw - he) + (hc + 1) * hw <= hl * hw then
  if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], 2 * mw - me) end
  if redis.call('INCR', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], 2 * hw - he) end
  redis.call('ZADD', KEYS[5], now + ttl, ARGV[9])
  redis.call('PEXPIRE', KEYS[5], ttl)
  local charge = input + out
  if tml >= 0 and redis.call('INCRBY', KEYS[6], charge) == charge then
    redis.call('PEXPIRE', KEYS[6], 2 * mw - me)
  end
  if thl >= 0 and redis.call('INCRBY', KEYS[8], charge) == charge then
    redis.call('PEXPIRE', KEYS[8], 2 * hw - he)
  end
  return {1, mc, mp, hc, hp, active, tmc, tmp, thc, thp, out}
end
return {0, mc, mp, hc, hp, active, tmc, tmp, thc, thp, out}
