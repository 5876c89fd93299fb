-- A small runner for integration scripts run by `lupe run`: each case passes, fails or
-- skips with a reason; the closing line is "N passed, N failed, N skipped"; the exit
-- status is 1 on any failure, 77 (ctest's skip) when everything skipped.
local M = { cases = {} }

M.bin = os.getenv("LUPE_BIN") or "build/lupe"
M.fixtures = os.getenv("LUPE_FIXTURES") or "tests/fixtures"

local Skip = {}

function M.case(name, fn) M.cases[#M.cases + 1] = { name = name, fn = fn } end
function M.skip(reason) error(setmetatable({ reason = reason }, Skip), 0) end

function M.check(cond, fmt, ...)
  if not cond then error(("check failed: " .. (fmt or "?")):format(...), 2) end
  return cond
end

-- LuaJIT's os.execute returns the raw wait status (5.1), or true/nil, "exit", code (5.2).
local function status_of(ok, _, code)
  if type(ok) == "number" then
    if ok > 255 then return math.floor(ok / 256) end
    return ok
  end
  if ok == true then return 0 end
  return code or 1
end

-- Runs cmd with stderr folded into stdout; returns exit status, output.
function M.sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"#rc=$?\""))
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.*)#rc=(%d+)\n?$")
  return tonumber(rc) or 1, body or out
end

-- A file's bytes, or nil if it cannot be opened.
function M.slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Runs cmd; returns exit status, stdout, stderr.
function M.run(cmd)
  local out, err = os.tmpname(), os.tmpname()
  local status = status_of(os.execute(cmd .. " >" .. out .. " 2>" .. err))
  local o, e = M.slurp(out), M.slurp(err)
  os.remove(out)
  os.remove(err)
  return status, o, e
end

function M.is_root()
  local _, out = M.sh("id -u")
  return out:match("^0") ~= nil
end

function M.tmpdir()
  local _, d = M.sh("mktemp -d")
  return (d:gsub("%s+$", ""))
end

-- Runs each shell command (fixture builds); raises with the command's output on failure.
function M.build(cmds)
  for _, c in ipairs(cmds) do
    local rc, out = M.sh(c)
    if rc ~= 0 then error("fixture build failed: " .. c .. "\n" .. out) end
  end
end

-- `lupe record ARGS` writing folded stacks to path; returns parsed rows, status, stderr.
function M.record(path, args)
  os.remove(path)
  local status, _, err = M.run(("%s record -o %s %s"):format(M.bin, path, args))
  local f = io.open(path)
  local text = f and f:read("*a") or ""
  if f then f:close() end
  return M.parse_folded(text), status, err
end

-- Parses folded output into { {stack = {"comm", root, ..., leaf}, count = n}, ... }.
function M.parse_folded(text)
  local rows = {}
  for line in text:gmatch("[^\n]+") do
    local stack, count = line:match("^(.*) (%d+)$")
    if stack then
      local frames = {}
      for f in (stack .. ";"):gmatch("([^;]*);") do frames[#frames + 1] = f end
      rows[#rows + 1] = { stack = frames, count = tonumber(count), line = line }
    end
  end
  return rows
end

function M.run_all()
  local passed, failed, skipped = 0, 0, 0
  for _, c in ipairs(M.cases) do
    local ok, err = xpcall(c.fn, function(e)
      if getmetatable(e) == Skip then return e end
      return debug.traceback(tostring(e), 2)
    end)
    if ok then
      passed = passed + 1
      print("ok   " .. c.name)
    elseif getmetatable(err) == Skip then
      skipped = skipped + 1
      print("SKIP " .. c.name .. ": " .. err.reason)
    else
      failed = failed + 1
      print("FAIL " .. c.name .. "\n    " .. tostring(err):gsub("\n", "\n    "))
    end
    io.stdout:flush()
  end
  print(("%d passed, %d failed, %d skipped"):format(passed, failed, skipped))
  if failed > 0 then return 1 end
  if passed == 0 then return 77 end
  return 0
end

return M
