-- The lupe Lua API. Submodules load on first use: lupe.procmgr, lupe.log, ...
local native = require "lupe.native"

local M = { version = native.version }

local lazy = {
  log = "lupe.log",
  procmgr = "lupe.procmgr",
}

return setmetatable(M, {
  __index = function(t, k)
    local name = lazy[k]
    if name == nil then return nil end
    local mod = require(name)
    rawset(t, k, mod)
    return mod
  end,
})
