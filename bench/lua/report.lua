-- Shared by every scenario; done() prints one JSON line for bench/report.py.
--
-- A scenario that calls check_each_response() has every answer counted by status
-- and, when its request said what it expects in x-request-id ("e<status>-<n>"),
-- checked. That costs wrk a Lua call and header parsing per response, so the
-- scenarios with one expected answer (A-C) skip it and take wrk's own count of
-- answers that are not 2xx/3xx instead.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

statuses = {}
mismatches = 0

local function count(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local expected = string.match(headers["x-request-id"] or "", "^e(%d%d%d)%-")
  if expected ~= nil and expected ~= tostring(status) then
    mismatches = mismatches + 1
  end
end

function check_each_response()
  response = count
end

-- One line per file entry.
function lines(path)
  local all = {}
  for line in io.lines(path) do
    if line ~= "" then table.insert(all, line) end
  end
  return all
end

function done(summary, latency, requests)
  local counted, wrong, again = {}, 0, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counted[status] = (counted[status] or 0) + count
    end
    wrong = wrong + thread:get("mismatches")
    -- Scenarios G-J (cold_tokens.lua): tokens handed out a second time.
    again = again + (thread:get("reused") or 0)
  end
  local parts = {}
  for status, n in pairs(counted) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  if #parts == 0 then
    table.insert(parts, string.format('"2xx/3xx": %d', summary.requests - summary.errors.status))
    if summary.errors.status > 0 then
      table.insert(parts, string.format('"other": %d', summary.errors.status))
    end
  end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "socket_errors": %d, "mismatches": %d, "reused": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    wrong, again, table.concat(parts, ", ")))
end
