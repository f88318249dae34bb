-- Pantheon's turn limiter: check, then increment, atomically.
-- KEYS: minute current, minute previous, hour current, hour previous
--       (ratelimit:{<user>}:turns:<bucket>:<window index>).
-- ARGV: minute limit, minute window ms, minute elapsed ms,
--       hour limit,   hour window ms,   hour elapsed ms.
-- Admits when p*(W-e) + (c+1)*W <= L*W holds for both windows, and only then
-- increments both current counters; a new counter expires 2W-e ms later (the
-- end of the next window, when it stops being anyone's "previous").
-- Returns {admitted (0|1), minute current, minute previous, hour current,
-- hour previous} with the counts as read, before any increment: the
-- application computes remaining and retry times from them.
--
-- Written for the cost of every admitted turn: one MGET instead of four
-- GETs, and no functions defined per call (each redis.call and each closure
-- is work Redis does under its one thread).
local v = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local mc, mp = tonumber(v[1] or 0), tonumber(v[2] or 0)
local hc, hp = tonumber(v[3] or 0), tonumber(v[4] or 0)
local ml, mw, me = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hl, hw, he = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if mp * (mw - me) + (mc + 1) * mw <= ml * mw and hp * (hw - he) + (hc + 1) * hw <= hl * hw then
  if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], 2 * mw - me) end
  if redis.call('INCR', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], 2 * hw - he) end
  return {1, mc, mp, hc, hp}
end
return {0, mc, mp, hc, hp}
