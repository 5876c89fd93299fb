-- pprof's profile.proto (github.com/google/pprof/blob/main/proto/profile.proto), gzipped:
-- what `go tool pprof`, pprof's web UI and most profile stores read.
--   sample types    samples/count and cpu/nanoseconds (count x 1e9 / frequency)
--   samples         one per (stack, pid): location ids leaf first, labels pid (num) and
--                   comm (string), and service.name (string) where an APM agent named it
--   locations       one per distinct frame: its address and one line naming its function
--   functions       one per frame label (name = system_name = the label folded writes,
--                   filename = the module)
--   mappings        one per module: filename, no build id (frames carry none yet), and
--                   has_functions set (pprof must not try to symbolize them again); the
--                   heaviest executable that is not a shared library comes first, as
--                   pprof takes the first mapping for the main binary
--   comments        the session's counts (lost, filtered, truncated, errors, unknown)
--   period          cpu/nanoseconds, 1e9 / frequency; duration_nanos
-- Addresses are the frames' own: ELF virtual addresses of their module for native frames
-- (what addr2line -e module takes), kernel addresses for kernel frames. Mapping bounds
-- are not known here and are left 0.
local output = require "lupe.output"
local u64 = require "lupe.u64"
local codec = require("lupe.native").codec

local M = {}
local label, locator, to_c = output.label, output.locator, u64.to_c
local type, ipairs, floor, fmt = type, ipairs, math.floor, string.format

-- profile.proto field numbers.
local P = { sample_type = 1, sample = 2, mapping = 3, location = 4, ["function"] = 5,
            string_table = 6, time_nanos = 9, duration_nanos = 10, period_type = 11,
            period = 12, comment = 13 }

-- The uncompressed protobuf message, as a string.
function M.encode(profile)
  local strings, sidx = { "" }, { [""] = 0 }
  local function str(s)
    local i = sidx[s]
    if i then return i end
    i = #strings
    strings[i + 1] = s
    sidx[s] = i
    return i
  end

  local out, locs, funcs = codec.buffer(1024 * 1024), codec.buffer(), codec.buffer()
  local msg, sub = codec.buffer(), codec.buffer()
  local function value_type(field, t, unit)
    sub:reset():uint(1, str(t)):uint(2, str(unit))
    out:bytes(field, sub)
  end
  value_type(P.sample_type, "samples", "count")
  value_type(P.sample_type, "cpu", "nanoseconds")

  local freq = profile.frequency or 0
  local period = freq > 0 and 1e9 / freq or 0

  -- Mappings and functions are created as their first location needs them.
  local mapping_ids, mapping_names = {}, {}
  local function mapping_of(f)
    if f.kind ~= "native" and f.kind ~= "kernel" then return 0 end
    local name = f.module or (f.kind == "kernel" and "[kernel]") or nil
    if not name then return 0 end
    local id = mapping_ids[name]
    if not id then
      id = #mapping_names + 1
      mapping_names[id] = name
      mapping_ids[name] = id
    end
    return id
  end
  local func_ids, nfuncs = {}, 0
  local function function_of(f)
    local name = label(f)
    local module = f.module or ""
    local byname = func_ids[module]
    if not byname then byname = {} func_ids[module] = byname end
    local id = byname[name]
    if id then return id end
    nfuncs = nfuncs + 1
    id = nfuncs
    byname[name] = id
    local sname = str(name)
    msg:reset():uint(1, id):uint(2, sname):uint(3, sname)
    if module ~= "" then msg:uint(4, str(module)) end
    funcs:bytes(P["function"], msg)
    return id
  end

  local locate = locator()
  local ids, vals, loc_mapping, mapping_weight = {}, {}, {}, {}
  local key_pid, key_comm, key_service = str("pid"), str("comm"), str("service.name")
  for _, e in ipairs(profile.entries) do
    local frames = e.frames
    local n = #frames
    local count = e.count
    for i = 1, n do
      local f = frames[i]
      local id, new = locate(f)
      ids[i] = id
      if new then
        -- function_of writes its own message first: msg is free again after it.
        local fid, m = function_of(f), mapping_of(f)
        loc_mapping[id] = m
        if m > 0 and not mapping_weight[m] then mapping_weight[m] = 0 end
        msg:reset():uint(1, id)
        if m > 0 then msg:uint(2, m) end
        local a = f.addr
        if a ~= nil and a ~= 0 then msg:uint(3, type(a) == "cdata" and to_c(a) or a) end
        sub:reset():uint(1, fid)
        msg:bytes(4, sub)
        locs:bytes(P.location, msg)
      end
      local m = loc_mapping[id]
      if m > 0 then mapping_weight[m] = mapping_weight[m] + count end
    end
    vals[1], vals[2] = count, floor(count * period + 0.5)
    msg:reset():packed(1, ids, n):packed(2, vals, 2)
    sub:reset():uint(1, key_pid):uint(3, e.pid or 0)
    msg:bytes(3, sub)
    sub:reset():uint(1, key_comm):uint(2, str(e.comm or ""))
    msg:bytes(3, sub)
    if e.service then
      sub:reset():uint(1, key_service):uint(2, str(e.service))
      msg:bytes(3, sub)
    end
    out:bytes(P.sample, msg)
  end

  -- pprof takes the first mapping for the main binary ("File:" in its reports): put
  -- first the heaviest module that is neither a shared library nor a [pseudo] file.
  local main_id, main_weight = nil, -1
  for id, name in ipairs(mapping_names) do
    local base = name:match("[^/]*$")
    if not base:find("^%[") and not base:find("%.so$") and not base:find("%.so[._]%d")
       and mapping_weight[id] > main_weight then
      main_id, main_weight = id, mapping_weight[id]
    end
  end
  local function write_mapping(id)
    msg:reset():uint(1, id):uint(5, str(mapping_names[id])):uint(7, 1)
    out:bytes(P.mapping, msg)
  end
  if main_id then write_mapping(main_id) end
  for id in ipairs(mapping_names) do
    if id ~= main_id then write_mapping(id) end
  end
  out:raw(locs, funcs)
  locs:close()
  funcs:close()

  -- Comments before the string table is written: they add strings.
  local st = profile.stats or {}
  local comments = {
    str("lupe: " .. output.counts_summary(st)),
    str(fmt("lupe: frequency=%d Hz duration=%.3f s ncpus=%d target=%s", freq,
            profile.duration or 0, st.ncpus or 0, output.describe_target(profile.target))),
  }
  out:strings(P.string_table, strings)
  if profile.time_nanos then out:uint(P.time_nanos, profile.time_nanos) end
  out:uint(P.duration_nanos, floor((profile.duration or 0) * 1e9 + 0.5))
  sub:reset():uint(1, sidx["cpu"]):uint(2, sidx["nanoseconds"])
  out:bytes(P.period_type, sub)
  out:uint(P.period, floor(period + 0.5))
  out:packed(P.comment, comments)
  local s = out:tostring()
  out:close()
  msg:close()
  sub:close()
  return s
end

-- opts.gzip_level: 0..9 (default 1, as Go's runtime/pprof); opts.gzip == false writes the
-- bare protobuf. Returns the bytes written.
function M.write(profile, fh, opts)
  opts = opts or {}
  local data = M.encode(profile)
  if opts.gzip ~= false then data = codec.gzip(data, opts.gzip_level or 1) end
  fh:write(data)
  return #data
end

return M
