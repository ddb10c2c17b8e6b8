-- Scenario B: one job, tokens rotating over many distinct valid ones.
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

function init(args)
  prepared = {}
  for _, token in ipairs(lines(os.getenv("BENCH_TOKENS"))) do
    table.insert(prepared, wrk.format("GET", os.getenv("BENCH_PATH"), { ["Authorization"] = "Bearer " .. token }))
  end
  next_one = 0
end

function request()
  next_one = next_one % #prepared + 1
  return prepared[next_one]
end
