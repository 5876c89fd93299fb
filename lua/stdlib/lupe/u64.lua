-- Exact 64-bit values between Lua and C. C hands over 8-byte strings (host order); Lua
-- works with uint64_t cdata, which keep every bit (a double does not: kernel addresses
-- collide). Numbers up to 2^53 are accepted wherever a 64-bit value is.
local ffi = require "ffi"
local bit = require "bit"

local M = {}
local cast, fstring, tohex, type = ffi.cast, ffi.string, bit.tohex, type
local u64p = ffi.typeof("const uint64_t *")
local u64a = ffi.typeof("uint64_t[1]")
local u64t = ffi.typeof("uint64_t")

-- 8-byte string from C -> uint64_t cdata.
function M.from_c(s)
  return cast(u64p, s)[0]
end

-- Any 64-bit value (cdata, number, 8-byte string) -> what the C side accepts.
function M.to_c(v)
  if type(v) == "cdata" then return fstring(u64a(v), 8) end
  return v
end

-- Any 64-bit value -> uint64_t cdata.
function M.of(v)
  if type(v) == "string" then return M.from_c(v) end
  return u64t(v)
end

-- "0x" .. 16 hex digits.
function M.hex(v)
  return "0x" .. tohex(M.of(v), 16)
end

-- Parses "0x..." or decimal digits exactly.
function M.parse(s)
  local hex = s:match("^0[xX](%x+)$")
  local acc = u64t(0)
  if hex then
    if #hex > 16 then return nil end
    for i = 1, #hex do acc = acc * 16 + tonumber(hex:sub(i, i), 16) end
    return acc
  end
  if not s:match("^%d+$") or #s > 20 then return nil end
  for i = 1, #s do acc = acc * 10 + (s:byte(i) - 48) end
  return acc
end

return M
