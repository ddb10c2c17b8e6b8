-- Scenarios A and C: one job, one token, again and again.
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

function init(args)
  request_bytes = wrk.format("GET", os.getenv("BENCH_PATH"), { ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN") })
end

function request()
  return request_bytes
end
