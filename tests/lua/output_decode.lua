-- Readers for what the output formats write, written from the format specifications and
-- sharing no code with the writers: a protobuf wire decoder, pprof's profile.proto on
-- top of it, and a strict JSON parser (RFC 8259). Used by tests/lua/output_*_spec.lua
-- and tests/integration/formats_test.lua.
local ffi = require "ffi"
local bit = require "bit"

local M = {}
local byte, sub, char = string.byte, string.sub, string.char

-- Varints: a Lua number when below 2^53, else a uint64_t cdata (exact).
local function varint(s, pos)
  local v, shift = ffi.new("uint64_t", 0), 0
  while true do
    local b = byte(s, pos)
    if not b then error("truncated varint at " .. pos) end
    if shift >= 64 then error("varint longer than 10 bytes at " .. pos) end
    v = v + bit.lshift(ffi.new("uint64_t", b % 128), shift)
    pos = pos + 1
    shift = shift + 7
    if b < 128 then break end
  end
  if v < 2 ^ 53 then return tonumber(v), pos end
  return v, pos
end
M.varint = varint

-- One message: a list of {field, wire, value}; value is a number/cdata (varint, fixed)
-- or a string (length-delimited).
function M.fields(s)
  local out, pos = {}, 1
  while pos <= #s do
    local key
    key, pos = varint(s, pos)
    local field, wire = math.floor(key / 8), key % 8
    local value
    if wire == 0 then
      value, pos = varint(s, pos)
    elseif wire == 2 then
      local len
      len, pos = varint(s, pos)
      if pos + len - 1 > #s then error("length-delimited field past the end") end
      value = sub(s, pos, pos + len - 1)
      pos = pos + len
    elseif wire == 1 then
      value = sub(s, pos, pos + 7)
      pos = pos + 8
    elseif wire == 5 then
      value = sub(s, pos, pos + 3)
      pos = pos + 4
    else
      error("unknown wire type " .. wire)
    end
    out[#out + 1] = { field = field, wire = wire, value = value }
  end
  return out
end

-- A repeated varint field, packed (a string) or not (a number) or both, appended to list.
local function append_varints(list, f)
  if f.wire == 2 then
    local pos = 1
    while pos <= #f.value do
      local v
      v, pos = varint(f.value, pos)
      list[#list + 1] = v
    end
  else
    list[#list + 1] = f.value
  end
end

-- profile.proto, decoded into plain tables with strings resolved.
function M.pprof(s)
  local p = { sample_type = {}, sample = {}, mapping = {}, location = {}, ["function"] = {},
              string_table = {}, comment = {}, raw = {} }
  local comment_idx = {}
  local msgs = M.fields(s)
  for _, f in ipairs(msgs) do
    if f.field == 6 then p.string_table[#p.string_table + 1] = f.value end
  end
  local function str(i)
    local v = p.string_table[i + 1]
    if v == nil then error("string index out of range: " .. tostring(i)) end
    return v
  end
  local function value_type(bytes)
    local vt = { type = "", unit = "" }
    for _, g in ipairs(M.fields(bytes)) do
      if g.field == 1 then vt.type = str(g.value) elseif g.field == 2 then vt.unit = str(g.value) end
    end
    return vt
  end
  for _, f in ipairs(msgs) do
    local n = f.field
    p.raw[n] = (p.raw[n] or 0) + 1
    if n == 1 then
      p.sample_type[#p.sample_type + 1] = value_type(f.value)
    elseif n == 2 then
      local smp = { location_id = {}, value = {}, label = {} }
      for _, g in ipairs(M.fields(f.value)) do
        if g.field == 1 then append_varints(smp.location_id, g)
        elseif g.field == 2 then append_varints(smp.value, g)
        elseif g.field == 3 then
          local l = {}
          for _, h in ipairs(M.fields(g.value)) do
            if h.field == 1 then l.key = str(h.value)
            elseif h.field == 2 then l.str = str(h.value)
            elseif h.field == 3 then l.num = h.value
            elseif h.field == 4 then l.num_unit = str(h.value) end
          end
          smp.label[#smp.label + 1] = l
        end
      end
      p.sample[#p.sample + 1] = smp
    elseif n == 3 then
      local m = { id = 0, memory_start = 0, memory_limit = 0, file_offset = 0, filename = "",
                  build_id = "", has_functions = 0 }
      local names = { "id", "memory_start", "memory_limit", "file_offset", "filename",
                      "build_id", "has_functions", "has_filenames", "has_line_numbers",
                      "has_inline_frames" }
      for _, g in ipairs(M.fields(f.value)) do
        local k = names[g.field]
        if k == "filename" or k == "build_id" then m[k] = str(g.value) elseif k then m[k] = g.value end
      end
      p.mapping[#p.mapping + 1] = m
    elseif n == 4 then
      local l = { id = 0, mapping_id = 0, address = 0, line = {} }
      for _, g in ipairs(M.fields(f.value)) do
        if g.field == 1 then l.id = g.value
        elseif g.field == 2 then l.mapping_id = g.value
        elseif g.field == 3 then l.address = g.value
        elseif g.field == 4 then
          local ln = { function_id = 0, line = 0 }
          for _, h in ipairs(M.fields(g.value)) do
            if h.field == 1 then ln.function_id = h.value elseif h.field == 2 then ln.line = h.value end
          end
          l.line[#l.line + 1] = ln
        end
      end
      p.location[#p.location + 1] = l
    elseif n == 5 then
      local fn = { id = 0, name = "", system_name = "", filename = "", start_line = 0 }
      for _, g in ipairs(M.fields(f.value)) do
        if g.field == 1 then fn.id = g.value
        elseif g.field == 2 then fn.name = str(g.value)
        elseif g.field == 3 then fn.system_name = str(g.value)
        elseif g.field == 4 then fn.filename = str(g.value)
        elseif g.field == 5 then fn.start_line = g.value end
      end
      p["function"][#p["function"] + 1] = fn
    elseif n == 9 then p.time_nanos = f.value
    elseif n == 10 then p.duration_nanos = f.value
    elseif n == 11 then p.period_type = value_type(f.value)
    elseif n == 12 then p.period = f.value
    elseif n == 13 then append_varints(comment_idx, f)
    end
  end
  for i, c in ipairs(comment_idx) do p.comment[i] = str(c) end
  return p
end

-- Strict JSON -> Lua: objects are tables (keys in .__keys in document order), arrays are
-- tables with .n, null is M.null. Errors name the byte offset.
M.null = setmetatable({}, { __tostring = function() return "null" end })

function M.json(s)
  local pos = 1
  local function fail(what) error(("json: %s at byte %d"):format(what, pos), 0) end
  local function ws()
    pos = s:find("[^ \t\r\n]", pos) or #s + 1
  end
  local value
  local function str()
    pos = pos + 1 -- opening quote
    local parts = {}
    while true do
      local c = byte(s, pos)
      if not c then fail("unterminated string") end
      if c == 34 then pos = pos + 1 break end
      if c < 32 then fail("control character in string") end
      if c == 92 then
        local e = sub(s, pos + 1, pos + 1)
        local simple = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n",
                         r = "\r", t = "\t" }
        if simple[e] then
          parts[#parts + 1] = simple[e]
          pos = pos + 2
        elseif e == "u" then
          local h = sub(s, pos + 2, pos + 5)
          if not h:match("^%x%x%x%x$") then fail("bad \\u escape") end
          local cp = tonumber(h, 16)
          pos = pos + 6
          if cp >= 0xd800 and cp <= 0xdbff then
            local l = sub(s, pos, pos + 5):match("^\\u(%x%x%x%x)$")
            if not l then fail("lone surrogate") end
            cp = 0x10000 + (cp - 0xd800) * 1024 + (tonumber(l, 16) - 0xdc00)
            pos = pos + 6
          end
          if cp < 0x80 then parts[#parts + 1] = char(cp)
          elseif cp < 0x800 then
            parts[#parts + 1] = char(0xc0 + math.floor(cp / 64), 0x80 + cp % 64)
          elseif cp < 0x10000 then
            parts[#parts + 1] = char(0xe0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64,
                                     0x80 + cp % 64)
          else
            parts[#parts + 1] = char(0xf0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                                     0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
          end
        else
          fail("bad escape")
        end
      else
        local stop = s:find('["\\%c]', pos) or #s + 1
        parts[#parts + 1] = sub(s, pos, stop - 1)
        pos = stop
      end
    end
    return table.concat(parts)
  end
  function value()
    ws()
    local c = sub(s, pos, pos)
    if c == "{" then
      pos = pos + 1
      local obj = { __keys = {} }
      ws()
      if sub(s, pos, pos) == "}" then pos = pos + 1 return obj end
      while true do
        ws()
        if sub(s, pos, pos) ~= '"' then fail("expected a key") end
        local k = str()
        ws()
        if sub(s, pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        if obj[k] ~= nil then fail("duplicate key '" .. k .. "'") end
        obj[k] = value()
        obj.__keys[#obj.__keys + 1] = k
        ws()
        local d = sub(s, pos, pos)
        pos = pos + 1
        if d == "}" then return obj end
        if d ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      pos = pos + 1
      local arr = { n = 0 }
      ws()
      if sub(s, pos, pos) == "]" then pos = pos + 1 return arr end
      while true do
        arr.n = arr.n + 1
        arr[arr.n] = value()
        ws()
        local d = sub(s, pos, pos)
        pos = pos + 1
        if d == "]" then return arr end
        if d ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then
      return str()
    elseif s:find("^true", pos) then pos = pos + 4 return true
    elseif s:find("^false", pos) then pos = pos + 5 return false
    elseif s:find("^null", pos) then pos = pos + 4 return M.null
    elseif c == "-" or c:match("%d") then
      -- -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][-+]?[0-9]+)?
      local start = pos
      if c == "-" then pos = pos + 1 end
      if sub(s, pos, pos) == "0" then
        pos = pos + 1
      else
        local d = s:match("^[1-9]%d*", pos)
        if not d then fail("bad number") end
        pos = pos + #d
      end
      local frac = s:match("^%.%d+", pos)
      if frac then pos = pos + #frac elseif sub(s, pos, pos) == "." then fail("bad fraction") end
      local exp = s:match("^[eE][-+]?%d+", pos)
      if exp then pos = pos + #exp elseif s:find("^[eE]", pos) then fail("bad exponent") end
      return tonumber(sub(s, start, pos - 1))
    else
      fail("unexpected '" .. c .. "'")
    end
  end
  local v = value()
  ws()
  if pos <= #s then fail("trailing characters") end
  return v
end

return M
