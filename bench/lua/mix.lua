-- Scenario D: jobs in every status, 5% unknown ids (404) and 1% bad tokens (401),
-- each request carrying the status it expects so that report.lua can check it.
dofile(os.getenv("BENCH_LUA") .. "/report.lua")
check_each_response()

function init(args)
  math.randomseed(20261127)
  local ids = lines(os.getenv("BENCH_IDS"))
  local bad = lines(os.getenv("BENCH_BAD_TOKENS"))
  local good = "Bearer " .. os.getenv("BENCH_TOKEN")
  prepared = {}
  for n = 1, 20000 do
    local path, auth, expect
    if n % 100 == 0 then
      path, auth, expect = "/api/patients/composition/job/" .. ids[math.random(#ids)], "Bearer " .. bad[math.random(#bad)], 401
    elseif n % 20 == 1 then
      path, auth, expect = string.format("/api/patients/composition/job/%08x-0000-4000-8000-%012x", n, n), good, 404
    else
      path, auth, expect = "/api/patients/composition/job/" .. ids[math.random(#ids)], good, 200
    end
    table.insert(prepared, wrk.format("GET", path, { ["Authorization"] = auth, ["x-request-id"] = string.format("e%d-%d", expect, n) }))
  end
  next_one = 0
end

function request()
  next_one = next_one % #prepared + 1
  return prepared[next_one]
end
