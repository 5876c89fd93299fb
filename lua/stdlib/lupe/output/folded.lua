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

-- The general path, for options the fast one does not know (service frames).
local function write_stacks(profile, fh, opts)
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

-- write() is the fast path of each_stack + lines (same lines, in first-seen order): 100k
-- stacks of 30 frames are 100 MB of text, so nothing is built per line or per frame.
-- Frames are numbered with output.frame_slot, as the locator does, inline; stacks are
-- frame numbers in one flat C array; each distinct frame's text (";" .. label) is made
-- once; lines are copied piece by piece into a 64 KiB C buffer (fwrite for a Lua file).
local ffi = require "ffi"
local format, iotype = string.format, io.type
local new_table = require "table.new"
-- pcall: another module may have declared fwrite already (a redeclaration raises).
pcall(ffi.cdef, "size_t fwrite(const void *ptr, size_t size, size_t n, void *stream);")
local BUFSZ = 65536
local frame_slot = output.frame_slot

function M.write(profile, fh, opts)
  if opts and opts.service then return write_stacks(profile, fh, opts) end
  local by_module, others, pieces, plen, nframes = {}, {}, {}, {}, 0
  local entries, cap, used = profile.entries, 0, 0
  local ne = #entries
  local comms, index = {}, {}          -- index[comm][hash]: the slot of a stack
  local s_comm, s_start, s_n = new_table(ne, 0), new_table(ne, 0), new_table(ne, 0)
  local s_count, s_len = new_table(ne, 0), new_table(ne, 0)
  local nslots = 0
  for i = 1, #entries do cap = cap + #entries[i].frames end
  local flat = ffi.new("int32_t[?]", cap + 1)
  for _, e in ipairs(entries) do
    local comm = e.comm ~= "" and e.comm or "[unknown]"
    local c = comms[comm]
    if not c then
      c = clean(comm)
      comms[comm] = c
      -- Comms that clean to the same text share their stacks, as in lines().
      index[c] = index[c] or {}
    end
    local frames = e.frames
    local n = #frames
    -- Root first, at flat[used ...]: kept only if the stack is new.
    local len = #c
    for i = 1, n do
      local f = frames[i]
      local ids, key = frame_slot(by_module, others, f)
      local id = ids[key]
      if not id then
        nframes = nframes + 1
        id = nframes
        ids[key] = id
        local p = ";" .. clean(label(f))
        pieces[id], plen[id] = p, #p
      end
      flat[used + n - i] = id
      len = len + plen[id]
    end
    local key = e.hash or ffi.string(flat + used, 4 * n)
    local ic = index[c]
    local slot = ic[key]
    if slot then
      s_count[slot] = s_count[slot] + e.count
    else
      nslots = nslots + 1
      ic[key] = nslots
      s_comm[nslots], s_start[nslots], s_n[nslots], s_count[nslots] = c, used, n, e.count
      s_len[nslots] = len
      used = used + n
    end
  end
  index = nil -- luacheck: ignore 311 (the merge table can go before the output is built)

  local buf, pos = ffi.new("char[?]", BUFSZ), 0
  local copy = ffi.copy
  -- A Lua file gets the buffer itself (its FILE *, through the FFI): no 100 MB of
  -- garbage strings. Anything else with :write gets strings.
  local fp = iotype(fh) == "file" and ffi.cast("void *", fh) or nil
  local function flush()
    if fp then
      if ffi.C.fwrite(buf, 1, pos, fp) ~= pos then error("folded: write failed", 3) end
    else
      fh:write(ffi.string(buf, pos))
    end
    pos = 0
  end
  local tails = {}                     -- count -> " count\n"; counts repeat a lot
  for k = 1, nslots do
    -- A line never straddles a flush; one longer than the buffer goes out on its own.
    if pos + s_len[k] + 24 > BUFSZ then flush() end
    local v = s_count[k]
    local tail = tails[v]
    if not tail then tail = format(" %d\n", v) tails[v] = tail end
    if s_len[k] + #tail > BUFSZ then
      local parts, first = { s_comm[k] }, s_start[k]
      for j = first, first + s_n[k] - 1 do parts[#parts + 1] = pieces[flat[j]] end
      parts[#parts + 1] = tail
      fh:write(concat(parts))
    else
      local c = s_comm[k]
      copy(buf + pos, c, #c)
      pos = pos + #c
      local first = s_start[k]
      for j = first, first + s_n[k] - 1 do
        local id = flat[j]
        local l = plen[id]
        copy(buf + pos, pieces[id], l)
        pos = pos + l
      end
      copy(buf + pos, tail, #tail)
      pos = pos + #tail
    end
  end
  if pos > 0 then flush() end
  return nslots
end

return M
