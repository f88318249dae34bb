-- One fixed request, repeated, counting responses by status (so a refusal
-- run can tell its 429s from anything else). Used for both legs of the
-- refusal scenario (the over-limit turn and GET /healthz), so the client's
-- per-response cost is the same on both sides of the ratio.
--
-- wrk ... -s bench/wrk/fixed.lua URL -- METHOD PATH [TOKEN|-] [BODY]
-- Ends with: RESULT requests=… rps=… p50_us=… p99_us=… status_errors=… socket_errors=… statuses=429:N,…
-- and QUANTILES (the latency distribution).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local req
counts = {}

function init(args)
  local method, path, token, body = args[1], args[2], args[3], args[4]
  local headers = {}
  if token and token ~= "-" then headers["Authorization"] = "Bearer " .. token end
  if body then headers["Content-Type"] = "application/json" end
  req = wrk.format(method, path, headers, body)
end

function request()
  return req
end

function response(status, _, _)
  counts[status] = (counts[status] or 0) + 1
end

-- The latency export both scenario scripts share, from the file beside this
-- one (wrk runs a script by the path it was given; it has no module path).
local quantiles = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "quantiles.lua")

function done(summary, latency, _)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      totals[status] = (totals[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(totals) do parts[#parts + 1] = status .. ":" .. n end
  table.sort(parts)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_us=%d p99_us=%d status_errors=%d socket_errors=%d statuses=%s\n",
    summary.requests, secs, summary.requests / secs, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout, table.concat(parts, ",")))
  io.write("QUANTILES " .. quantiles(latency) .. "\n")
end
