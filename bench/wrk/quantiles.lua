-- The latency distribution as percentile:microseconds points (every 0.5 %
-- to 97 %, every 0.1 % to 99.9 %, then the maximum), so bench/run.sh can
-- merge the rounds of a scenario into one distribution. Loaded by the
-- scenario scripts beside it.
return function(latency)
  local points = {}
  for i = 1, 194 do points[#points + 1] = i * 0.5 end
  for i = 1, 29 do points[#points + 1] = 97 + i * 0.1 end
  local parts = {}
  for _, p in ipairs(points) do
    parts[#parts + 1] = string.format("%.1f:%d", p, latency:percentile(p))
  end
  -- percentile(100) is not the maximum in wrk 4.1 (it answers 0).
  parts[#parts + 1] = string.format("100.0:%d", latency.max)
  return table.concat(parts, " ")
end
