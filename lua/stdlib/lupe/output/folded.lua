-- Brendan Gregg's collapsed stacks: one line per unique stack, root first,
--   comm;root_frame;...;leaf_frame COUNT
-- ready for flamegraph.pl, inferno or speedscope. Identical stacks of different processes
-- with the same comm are merged. write() streams lines in the order stacks were first
-- sampled (flame graph tools sort for themselves); lines() returns them sorted.
-- With opts.service, a stack whose process has an APM agent starts with a "service:NAME"
-- frame before its comm (off by default: tools reading the first frame as the process
-- name keep working).
local output = require "lupe.output"

local M = {}
local label, concat, sort, ipairs = output.label, table.concat, table.sort, ipairs

-- Frame names must not contain the separator or a newline.
local function clean(s)
  return (s:gsub("[;\n]", "_"))
end

-- Calls fn(comm, names, n, count) once per merged stack, names[1..n] root first. Stacks
-- merge by (comm, trace hash), or by their frames' ids where no hash is given; each
-- distinct frame is labelled once (output.locator numbers frames by module and address).
local function each_stack(profile, fn, opts)
  local with_service = opts and opts.service
  local locate = output.locator()
  local names, comms, index, slots, ids = {}, {}, {}, {}, {}
  for _, e in ipairs(profile.entries) do
    local comm = e.comm ~= "" and e.comm or "[unknown]"
    local c = comms[comm]
    if not c then c = clean(comm) comms[comm] = c end
    if with_service and e.service then c = "service:" .. clean(e.service) .. ";" .. c end
    local frames = e.frames
    local n = #frames
    local key = e.hash
    for i = 1, n do
      local f = frames[i]
      local id, new = locate(f)
      if new then names[id] = clean(label(f)) end
      ids[n - i + 1] = id
    end
    key = c .. "\0" .. (key or concat(ids, ",", 1, n))
    local slot = index[key]
    if slot then
      slot.count = slot.count + e.count
    else
      slot = { comm = c, ids = { unpack(ids, 1, n) }, count = e.count }
      index[key] = slot
      slots[#slots + 1] = slot
    end
  end
  local parts = {}
  for _, slot in ipairs(slots) do
    local sids = slot.ids
    for i = 1, #sids do parts[i] = names[sids[i]] end
    fn(slot.comm, parts, #sids, slot.count)
  end
end

function M.lines(profile, opts)
  local lines = {}
  each_stack(profile, function(comm, parts, n, count)
    lines[#lines + 1] = ("%s;%s %d"):format(comm, concat(parts, ";", 1, n), count)
  end, opts)
  -- A stack without frames has no ";" after its comm.
  for i, l in ipairs(lines) do lines[i] = l:gsub("; (%d+)$", " %1") end
  sort(lines)
  return lines
end

function M.write(profile, fh, opts)
  local buf, nb, nlines = {}, 0, 0
  each_stack(profile, function(comm, parts, n, count)
    buf[nb + 1] = comm
    if n > 0 then
      buf[nb + 2] = ";"
      buf[nb + 3] = concat(parts, ";", 1, n)
      nb = nb + 3
    else
      nb = nb + 1
    end
    buf[nb + 1] = (" %d\n"):format(count)
    nb = nb + 1
    nlines = nlines + 1
    if nb >= 4096 then fh:write(concat(buf, "", 1, nb)) nb = 0 end
  end, opts)
  fh:write(concat(buf, "", 1, nb))
  return nlines
end

return M
