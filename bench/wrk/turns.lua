-- JSON turns from many users: each request is the next `token session` line
-- of the users file (one session per user), so every request is a turn of a
-- distinct user until the file wraps around. wrk's threads start at
-- different offsets of the file.
--
-- wrk -t2 -c64 -d20s --latency -s bench/wrk/turns.lua http://127.0.0.1:PORT -- USERS_FILE [INPUT [keyed]]
-- With `keyed`, every request carries an `Idempotency-Key` of its own (a
-- first attempt each time: what a key costs when it is not a retry).
-- A line with a third field, `token session file_id` (what
-- `pantheon-loadgen upload --users … --out` writes), names that file in its
-- turns (`"files": ["<id>"]`): the model reads it with `file_read` first.
-- Ends with two machine-readable lines: RESULT requests=… rps=… p50_us=… …
-- and QUANTILES (the latency distribution).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads)
end

local requests = {}
local lines = {}
local keyed = false
local sent = 0
local next_index = 1

function init(args)
  local file = args[1] or error("usage: -- USERS_FILE [INPUT]")
  local input = args[2] or "Hello, Pantheon benchmark"
  keyed = args[3] == "keyed"
  for line in io.lines(file) do
    local token, session, file_id = line:match("^(%S+)%s+(%S+)%s*(%S*)")
    if token then
      local body = '{"input":"' .. input .. '"}'
      if file_id ~= "" then body = '{"input":"' .. input .. '","files":["' .. file_id .. '"]}' end
      local headers = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
      lines[#lines + 1] = { "/api/v1/sessions/" .. session .. "/turns", headers, body }
      requests[#requests + 1] = wrk.format("POST", lines[#lines][1], headers, body)
    end
  end
  if #requests == 0 then error(file .. ": no `token session` lines") end
  -- Spread the threads over the file.
  next_index = ((thread_index or 1) - 1) * math.floor(#requests / 2) % #requests + 1
end

function request()
  local r = requests[next_index]
  if keyed then
    local line = lines[next_index]
    sent = sent + 1
    line[2]["Idempotency-Key"] = string.format("bench-%d-%d-%d", thread_index or 1, os.time(), sent)
    r = wrk.format("POST", line[1], line[2], line[3])
  end
  next_index = next_index % #requests + 1
  return r
end

-- The latency export both scenario scripts share, from the file beside this
-- one (wrk runs a script by the path it was given; it has no module path).
local quantiles = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "quantiles.lua")

function done(summary, latency, _)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_us=%d p99_us=%d status_errors=%d socket_errors=%d\n",
    summary.requests, secs, summary.requests / secs, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
  io.write("QUANTILES " .. quantiles(latency) .. "\n")
end
