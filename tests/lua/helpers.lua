-- Shared by the specs: run the lupe executable and capture what it prints.
local M = {}

M.bin = os.getenv("LUPE_BIN") or "build/lupe"
M.build = os.getenv("LUPE_BUILD") or "build"
M.fixtures = os.getenv("LUPE_FIXTURES") or "tests/fixtures"

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
M.slurp = slurp

function M.tmpname(suffix)
  local name = os.tmpname()
  if suffix then
    os.remove(name)
    name = name .. suffix
  end
  return name
end

function M.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Runs a shell command line; returns exit status, stdout, stderr.
function M.run(cmdline)
  local out, err = os.tmpname(), os.tmpname()
  local ok, how, code = os.execute(cmdline .. " >" .. out .. " 2>" .. err)
  -- LuaJIT with 5.2 compat returns (true|nil, "exit", code); plain 5.1 returns a number.
  local status
  if type(ok) == "number" then status = ok / 256 else status = code or (ok and 0 or 1) end
  local o, e = slurp(out), slurp(err)
  os.remove(out)
  os.remove(err)
  return status, o, e, how
end

function M.lupe(args)
  return M.run(M.bin .. " " .. args)
end

return M
