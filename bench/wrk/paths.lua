-- wrk script: GET the newline-separated PATHS in turn, with the bearer TOKEN.
local paths = {}
for p in string.gmatch(os.getenv("PATHS"), "[^\n]+") do
  paths[#paths + 1] = p
end
local headers = { Authorization = "Bearer " .. os.getenv("TOKEN") }
local i = 0

request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], headers)
end
