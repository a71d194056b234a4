-- wrk script: GET random 1 MiB ranges of an object of OBJECT_SIZE bytes (one Range each).
local size = tonumber(os.getenv("OBJECT_SIZE"))
local span = 1024 * 1024

math.randomseed(os.time())

request = function()
  local first = math.random(0, math.max(size - span, 0))
  local last = math.min(first + span, size) - 1
  return wrk.format("GET", nil, { Range = "bytes=" .. first .. "-" .. last })
end
