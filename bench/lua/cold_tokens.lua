-- Scenarios G-J: one job, and a token per request that this server has not seen.
--
-- BENCH_TOKENS is a file of distinct tokens, one per line; this run takes the
-- BENCH_TOKENS_TAKE lines after the first BENCH_TOKENS_SKIP (run.sh gives the
-- warm-up and the measured round disjoint slices) and hands each out once, in
-- order. Should the run outlast them, it starts over and counts every token it
-- hands out again in `reused`: report.py then calls the scenario invalid, since
-- the service answers a token it has seen from its cache.
--
-- Every answer is counted by status, and those that are not BENCH_EXPECT are
-- counted as mismatches (the baseline answers 200 to everything: its mismatches
-- in I and J mean nothing and are not reported).
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

function init(args)
  local path = os.getenv("BENCH_PATH")
  local skip = tonumber(os.getenv("BENCH_TOKENS_SKIP") or "0")
  local take = tonumber(os.getenv("BENCH_TOKENS_TAKE"))
  expected = tonumber(os.getenv("BENCH_EXPECT"))
  prepared = {}
  local seen = 0
  for token in io.lines(os.getenv("BENCH_TOKENS")) do
    seen = seen + 1
    if seen > skip then
      if #prepared >= take then break end
      prepared[#prepared + 1] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
    end
  end
  if #prepared < take then
    error(string.format("%s holds %d tokens after the first %d; %d wanted",
      os.getenv("BENCH_TOKENS"), #prepared, skip, take))
  end
  handed = 0
  reused = 0
end

function request()
  handed = handed + 1
  if handed > #prepared then
    reused = reused + 1
  end
  return prepared[(handed - 1) % #prepared + 1]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status ~= expected then
    mismatches = mismatches + 1
  end
end
