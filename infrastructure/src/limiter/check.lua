-- Pantheon's turn limiter: check, then count and take a slot, atomically.
-- KEYS: minute current, minute previous, hour current, hour previous
--       (ratelimit:{<user>}:turns:<bucket>:<window index>), and the active
--       turns (ratelimit:{<user>}:turns:active, a sorted set of lease ids
--       scored by their expiry in ms of the application's clock).
-- ARGV: minute limit, minute window ms, minute elapsed ms,
--       hour limit,   hour window ms,   hour elapsed ms,
--       now ms, lease TTL ms, concurrency cap, lease id.
-- Drops expired leases, then admits when fewer than cap leases remain and
-- p*(W-e) + (c+1)*W <= L*W holds for both windows; only then increments
-- both current counters (a new counter expires 2W-e ms later: the end of
-- the next window, when it stops being anyone's "previous") and adds the
-- lease, expiring at now + TTL; the set itself expires a TTL after its
-- newest lease, so a user whose instances all died leaves nothing behind.
-- A refusal changes no counter and takes no slot.
-- Returns {admitted (0|1), minute current, minute previous, hour current,
-- hour previous, active} with what it read, before any change: the
-- application computes remaining, free slots and retry times from them.
--
-- Written for the cost of every admitted turn: one MGET instead of four
-- GETs, and no functions defined per call (each redis.call and each closure
-- is work Redis does under its one thread).
local v = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local mc, mp = tonumber(v[1] or 0), tonumber(v[2] or 0)
local hc, hp = tonumber(v[3] or 0), tonumber(v[4] or 0)
local ml, mw, me = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hl, hw, he = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now, ttl, cap = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
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
