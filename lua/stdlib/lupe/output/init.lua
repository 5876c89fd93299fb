-- Output formats are Lua modules: lupe.output.get("folded").write(profile, file).
-- Each format module has write(profile, fh) where fh has :write (a file or io.stdout).
local bit = require "bit"

local M = {}
local tohex, require, pcall = bit.tohex, require, pcall

M.formats = { "folded", "top" }

function M.get(name)
  if type(name) ~= "string" or not name:match("^[%w_]+$") then return nil, "bad format name" end
  local ok, mod = pcall(require, "lupe.output." .. name)
  if not ok then
    return nil, ("unknown format '%s' (formats: %s)"):format(name, table.concat(M.formats, ", "))
  end
  return mod
end

local function hex(v)
  -- Strip leading zeros: module+0x1139, not module+0x0000000000001139.
  local h = tohex(v, 16):gsub("^0+", "")
  return "0x" .. (h == "" and "0" or h)
end
M.hex = hex

-- One frame's label, as flame graphs show it: kernel frames end in _[k]; a native frame
-- without a symbol is module+0xADDR (its ELF address, what addr2line -e module takes).
function M.label(f)
  local kind = f.kind
  if kind == "kernel" then
    return (f.name or hex(f.addr)) .. "_[k]"
  elseif kind == "native" then
    if f.name then return f.name end
    return (f.module or "[unknown]") .. "+" .. hex(f.addr)
  elseif kind == "error" then
    return f.name or "[error]"
  end
  return "[unknown]"
end

-- The counts a profile dropped or could not resolve, as "name=value" pairs for outputs.
function M.loss_summary(stats)
  return ("samples=%d lost=%d filtered=%d truncated=%d unknown_frames=%d"):format(
    stats.samples, stats.lost, stats.filtered, stats.kernel_trunc + stats.user_trunc,
    stats.unknown_frames)
end

return M
