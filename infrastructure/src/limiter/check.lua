-- Pantheon's turn limiter: check, then count, take a slot and reserve
-- tokens, atomically; and (ARGV[1] = 'release') give slots and unused tokens
-- back.
--
-- Release: KEYS: the active turns, then the token counters to refund;
-- ARGV: 'release', the number n of leases, the n lease ids, then the tokens
-- to take off each counter in KEYS order. Removes the leases and takes the
-- tokens off each counter that still exists: a refund never makes a key
-- (one made anew would live without a TTL), and an expired counter counts
-- for nothing any more. Returns n.
--
-- Check:
-- KEYS: minute current, minute previous, hour current, hour previous
--       (ratelimit:{<user>}:turns:<bucket>:<window index>), the active
--       turns (ratelimit:{<user>}:turns:active, a sorted set of lease ids
--       scored by their expiry in ms of the application's clock), and, under
--       a token budget only, the tokens charged: minute current, minute
--       previous, hour current, hour previous
--       (ratelimit:{<user>}:tokens:<bucket>:<window index>).
-- ARGV: minute limit, minute window ms, minute elapsed ms,
--       hour limit,   hour window ms,   hour elapsed ms,
--       now ms, lease TTL ms, concurrency cap, lease id,
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
-- is below 2^53.
if ARGV[1] == 'release' then
  local n = tonumber(ARGV[2])
  redis.call('ZREM', KEYS[1], unpack(ARGV, 3, 2 + n))
  for i = 2, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('DECRBY', KEYS[i], ARGV[1 + n + i]) end
  end
  return n
end
local ml, mw, me = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hl, hw, he = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now, ttl, cap = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
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
    redis.call('ZADD', KEYS[5], now + ttl, ARGV[10])
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
local tml, thl = tonumber(ARGV[11]), tonumber(ARGV[12])
local input, least, out = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
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
  redis.call('ZADD', KEYS[5], now + ttl, ARGV[10])
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
