-- Shared by every scenario: counts responses by status and, when a request says
-- what it expects in x-request-id ("e<status>-<n>"), whether the answer agrees.
-- done() prints one JSON line for bench/report.py.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

statuses = {}
mismatches = 0

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local id = headers["x-request-id"]
  if id ~= nil and string.sub(id, 1, 1) == "e" and string.sub(id, 2, 4) ~= tostring(status) then
    mismatches = mismatches + 1
  end
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
  local counted, wrong = {}, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counted[status] = (counted[status] or 0) + count
    end
    wrong = wrong + thread:get("mismatches")
  end
  local parts = {}
  for status, count in pairs(counted) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "socket_errors": %d, "mismatches": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    wrong, table.concat(parts, ", ")))
end
