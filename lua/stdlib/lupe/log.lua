-- Logging for scripts, through the same sink as the C runtime (stderr, "lupe: ...").
local native = require("lupe.native").log

local M = {}
local log, format, select = native.log, string.format, select

local function emitter(level)
  return function(fmt, ...)
    if select("#", ...) > 0 then fmt = format(fmt, ...) end
    log(level, fmt)
  end
end

M.error = emitter("error")
M.warn = emitter("warn")
M.info = emitter("info")
M.debug = emitter("debug")
M.set_level = native.set_level
M.level = native.level

return M
