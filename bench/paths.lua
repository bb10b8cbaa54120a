-- wrk script: every request asks the next path of a file (one path per line), each thread
-- walking its own share (thread k of n: lines k, k + n, k + 2n, ...), so that no URL is
-- asked twice until the list wraps, as MOR's pages sign every link of every render anew.
-- wrk -s bench/paths.lua http://127.0.0.1:PORT -- PATHS_FILE THREADS

local started = 0

function setup(thread)
  thread:set("thread_index", started)
  started = started + 1
end

local paths = {}
local position, step

function init(args)
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  step = tonumber(args[2])
  position = thread_index + 1
end

function request()
  local path = paths[position]
  position = position + step
  if position > #paths then
    position = thread_index + 1
  end
  return wrk.format("GET", path)
end
