-- Brendan Gregg's collapsed stacks: one line per unique stack, root first,
--   comm;root_frame;...;leaf_frame COUNT
-- ready for flamegraph.pl, inferno or speedscope. Identical stacks of different processes
-- with the same comm are merged.
local output = require "lupe.output"

local M = {}
local label, concat, sort, ipairs = output.label, table.concat, table.sort, ipairs

-- Frame names must not contain the separator or a newline.
local function clean(s)
  return (s:gsub("[;\n]", "_"))
end

function M.lines(profile)
  local counts, order = {}, {}
  for _, e in ipairs(profile.entries) do
    local parts = { clean(e.comm ~= "" and e.comm or "[unknown]") }
    local frames = e.frames
    for i = #frames, 1, -1 do parts[#parts + 1] = clean(label(frames[i])) end
    local key = concat(parts, ";")
    if counts[key] == nil then order[#order + 1] = key counts[key] = 0 end
    counts[key] = counts[key] + e.count
  end
  sort(order)
  local lines = {}
  for i, key in ipairs(order) do lines[i] = ("%s %d"):format(key, counts[key]) end
  return lines, counts
end

function M.write(profile, fh)
  local lines = M.lines(profile)
  for _, l in ipairs(lines) do fh:write(l, "\n") end
  return #lines
end

return M
