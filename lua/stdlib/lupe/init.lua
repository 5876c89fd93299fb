-- The lupe Lua API. Submodules load on first use: lupe.procmgr, lupe.log, ...
local native = require "lupe.native"

local M = { version = native.version }

local lazy = {
  log = "lupe.log",
  procmgr = "lupe.procmgr",
  u64 = "lupe.u64",
  output = "lupe.output",
  policy = "lupe.policy",
  filter = "lupe.filter",
}

-- lupe.session{...}: see lupe/session.lua.
function M.session(opts)
  return require("lupe.session").session(opts)
end

-- lupe.policy_of(session): the live sampling policy of a session (see lupe/policy.lua).
function M.policy_of(session)
  return require("lupe.policy").new(session)
end

return setmetatable(M, {
  __index = function(t, k)
    local name = lazy[k]
    if name == nil then return nil end
    local mod = require(name)
    rawset(t, k, mod)
    return mod
  end,
})
