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
local function count(key)
  return tonumber(redis.call('GET', key) or '0')
end
local mc, mp, hc, hp = count(KEYS[1]), count(KEYS[2]), count(KEYS[3]), count(KEYS[4])
local ml, mw, me = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hl, hw, he = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function fits(c, p, limit, w, e)
  return p * (w - e) + (c + 1) * w <= limit * w
end
if fits(mc, mp, ml, mw, me) and fits(hc, hp, hl, hw, he) then
  if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], 2 * mw - me) end
  if redis.call('INCR', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], 2 * hw - he) end
  return {1, mc, mp, hc, hp}
end
return {0, mc, mp, hc, hp}
