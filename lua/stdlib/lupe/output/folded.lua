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

-- The merged stacks, sorted, and their counts. Each distinct frame's label is computed
-- once (output.locator numbers frames by module and address), not once per stack.
local function merged(profile)
  local locate = output.locator()
  local names, comms, counts, order, parts = {}, {}, {}, {}, {}
  for _, e in ipairs(profile.entries) do
    local comm = e.comm ~= "" and e.comm or "[unknown]"
    local c = comms[comm]
    if not c then c = clean(comm) comms[comm] = c end
    parts[1] = c
    local frames = e.frames
    local n = #frames
    for i = 1, n do
      local f = frames[i]
      local id, new = locate(f)
      if new then names[id] = clean(label(f)) end
      parts[n - i + 2] = names[id]
    end
    local key = concat(parts, ";", 1, n + 1)
    if counts[key] == nil then order[#order + 1] = key counts[key] = 0 end
    counts[key] = counts[key] + e.count
  end
  sort(order)
  return order, counts
end

function M.lines(profile)
  local order, counts = merged(profile)
  local lines = {}
  for i, key in ipairs(order) do lines[i] = ("%s %d"):format(key, counts[key]) end
  return lines, counts
end

function M.write(profile, fh)
  local order, counts = merged(profile)
  local buf, nb = {}, 0
  for _, key in ipairs(order) do
    buf[nb + 1], buf[nb + 2] = key, (" %d\n"):format(counts[key])
    nb = nb + 2
    if nb >= 2048 then fh:write(concat(buf, "", 1, nb)) nb = 0 end
  end
  fh:write(concat(buf, "", 1, nb))
  return #order
end

return M
