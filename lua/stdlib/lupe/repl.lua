-- `lupe repl`: a Lua prompt on a live session. The session samples in the background: the
-- line editor (lupe.native.repl, libedit) drains it every 50 ms while it waits for keys,
-- and once after each line. One thread, no locks.
--
-- The pure parts are exported for tests: M.pretty(value) (the printer), M.complete(text,
-- env) (Tab completion), M.evaluate(src, env) (one line or chunk).
local M = {}

local type, tostring, pairs, ipairs, select = type, tostring, pairs, ipairs, select
local sort, concat, fmt = table.sort, table.concat, string.format
local getmetatable, rawget, pcall, loadstring, setfenv = getmetatable, rawget, pcall, loadstring, setfenv

local MAX_ITEMS = 100 -- entries shown of one table; the rest is counted

local function is_ident(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

-- Keys in a stable order: integers ascending, then strings, then the rest by tostring.
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta == "number" and tb == "number" then return a < b end
    if ta == "number" then return true end
    if tb == "number" then return false end
    if ta == "string" and tb == "string" then return a < b end
    if ta == "string" then return true end
    if tb == "string" then return false end
    return tostring(a) < tostring(b)
  end)
  return keys
end

local function scalar(v)
  if type(v) == "string" then return fmt("%q", v):gsub("\\\n", "\\n") end
  return tostring(v)
end

local function key_text(k)
  if is_ident(k) then return k end
  return "[" .. scalar(k) .. "]"
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- A nested table on one line: its scalars, deeper tables as {…N}.
local function inline(t)
  local mt = getmetatable(t)
  if mt and mt.__tostring then return tostring(t) end
  local keys, parts, n = sorted_keys(t), {}, #t
  for i, k in ipairs(keys) do
    if i > 8 then parts[#parts + 1] = "… " .. (#keys - 8) .. " more" break end
    local v = t[k]
    local vs = type(v) == "table" and ("{…" .. count(v) .. "}") or scalar(v)
    if type(k) == "number" and k >= 1 and k <= n and k == math.floor(k) then
      parts[#parts + 1] = vs
    else
      parts[#parts + 1] = key_text(k) .. " = " .. vs
    end
  end
  if #parts == 0 then return "{}" end
  return "{ " .. concat(parts, ", ") .. " }"
end

-- The printer: scalars as Lua would write them, tables one level deep, one entry a line.
function M.pretty(v)
  if type(v) ~= "table" then return scalar(v) end
  local mt = getmetatable(v)
  if mt and mt.__tostring then return tostring(v) end
  local keys = sorted_keys(v)
  if #keys == 0 then return "{}" end
  local n, lines = #v, { "{" }
  for i, k in ipairs(keys) do
    if i > MAX_ITEMS then
      lines[#lines + 1] = fmt("  -- %d more", #keys - MAX_ITEMS)
      break
    end
    local x = v[k]
    local xs = type(x) == "table" and inline(x) or scalar(x)
    if type(k) == "number" and k >= 1 and k <= n and k == math.floor(k) then
      lines[#lines + 1] = "  " .. xs .. ","
    else
      lines[#lines + 1] = "  " .. key_text(k) .. " = " .. xs .. ","
    end
  end
  lines[#lines + 1] = "}"
  return concat(lines, "\n")
end

-- The fields a value offers to completion: its own keys, then (for tables and userdata)
-- those of its metatable's __index table, recursively (methods of objects).
local function fields(v, out, depth)
  out = out or {}
  depth = depth or 0
  if depth > 4 then return out end
  if type(v) == "table" then
    for k in pairs(v) do if is_ident(k) then out[k] = out[k] or v[k] end end
  end
  local mt = (type(v) == "table" or type(v) == "userdata") and getmetatable(v)
  if type(mt) == "table" then
    local idx = rawget(mt, "__index")
    if type(idx) == "table" and idx ~= v then fields(idx, out, depth + 1) end
  end
  return out
end

-- Tab completion of the name before the cursor: `lupe.se` -> "ssion(", {"session"}.
-- Returns the text to insert (the candidates' common continuation, "" if none) and the
-- candidates (full names). env is where names start (the prompt's globals).
function M.complete(text, env)
  local path = text:match("[%a_][%w_%.:]*$") or ""
  if text:sub(#text - #path, #text - #path):match("[%w_]") then return "", {} end
  local base, sep, partial = path:match("^(.*)([%.:])([%w_]*)$")
  local value = env
  if base then
    for name in base:gmatch("[^%.:]+") do
      local ok, nv = pcall(function() return value[name] end)
      if not ok or (type(nv) ~= "table" and type(nv) ~= "userdata") then return "", {} end
      value = nv
    end
  else
    partial, sep = path, ""
  end
  local cands = fields(value)
  if not base then fields(_G, cands) end
  local names = {}
  for k, v in pairs(cands) do
    if k:sub(1, #partial) == partial and (sep ~= ":" or type(v) == "function") then
      names[#names + 1] = k
    end
  end
  sort(names)
  if #names == 0 then return "", {} end
  local common = names[1]
  for i = 2, #names do
    local n = names[i]
    local j = 0
    while j < #common and j < #n and common:byte(j + 1) == n:byte(j + 1) do j = j + 1 end
    common = common:sub(1, j)
  end
  local insert = common:sub(#partial + 1)
  if #names == 1 then
    local v = cands[names[1]]
    if type(v) == "function" then insert = insert .. "("
    elseif type(v) == "table" then insert = insert .. "." end
  end
  local full = {}
  for i, n in ipairs(names) do full[i] = (base and (base .. sep) or "") .. n end
  return insert, full
end

-- The message, and the traceback only while it is in the user's code (not the REPL's).
local function traceback(e)
  local lines = {}
  for l in debug.traceback(tostring(e), 2):gmatch("[^\n]+") do
    if l:match("in function 'xpcall'") or l:match("lupe/repl%.lua") then break end
    -- error() itself is no place in the user's code (a helper's error showed only it).
    if not l:match("^%s*%[builtin#") and not l:match("^%s*%[C%]: in function 'error'$") then
      lines[#lines + 1] = l
    end
  end
  if lines[#lines] == "stack traceback:" then lines[#lines] = nil end
  return concat(lines, "\n")
end

local function pack(...) return { n = select("#", ...), ... } end

-- Runs src in env: as an expression if it is one (its values are the result), else as a
-- statement. Returns true, results (a packed table) | false, message, incomplete (the
-- chunk ends too early: more lines may complete it).
function M.evaluate(src, env)
  local fn, err = loadstring("return " .. src, "=stdin")
  if not fn then fn, err = loadstring(src, "=stdin") end
  if not fn then
    return false, err, err:match("<eof>'?$") ~= nil
  end
  setfenv(fn, env)
  -- Typed code runs interpreted, where Ctrl-C can stop it (hooks never run inside compiled
  -- loops); the library code it calls stays compiled.
  if jit then jit.off(fn, true) end
  local r = pack(xpcall(fn, traceback))
  if not r[1] then return false, r[2], false end
  return true, { n = r.n - 1, unpack(r, 2, r.n) }
end

-- Prints evaluation results: nothing for none, each value pretty-printed.
function M.show(results, out)
  out = out or io.stdout
  if results.n == 0 then return end
  local parts = {}
  for i = 1, results.n do parts[i] = M.pretty(results[i]) end
  out:write(concat(parts, "\t"), "\n")
end

local HELP = [[
helpers (s is the session):
  ps()              processes the session knows, with their sample counts
  maps(pid)         a process's executable mappings
  top(n)            the n functions where the time went (default 20)
  flame("out.svg")  an interactive flame graph of everything sampled so far
  freq(hz)          change the sampling frequency live; freq() tells it
  filter("expr")    keep only matching samples (see README: the filter language)
  stats()           the session's counters
  pause(), resume() stop and restart sampling
  lupe, s           the API and the live session; Tab completes names]]

-- The helpers bound to session s (nil: none), printing to out.
function M.helpers(s, out)
  out = out or io.stdout
  local h = {}
  local function need()
    if not s then error("no session (started with --no-session)", 3) end
    return s
  end
  function h.help() out:write(HELP, "\n") end
  function h.stats() return need():stats() end
  function h.freq(hz)
    local ss = need()
    if hz ~= nil then
      if type(hz) ~= "number" or hz < 1 then
        error("freq: expected a frequency in Hz >= 1, got " .. tostring(hz), 2)
      end
      local ok, msg = ss:set_frequency(hz)
      if not ok then error(msg, 2) end
    end
    return ss:frequency()
  end
  function h.pause() local ok, msg = need():pause() if not ok then error(msg, 2) end end
  function h.resume() local ok, msg = need():resume() if not ok then error(msg, 2) end end
  function h.filter(expr)
    if type(expr) ~= "string" then error("filter: expected an expression string", 2) end
    need():filter(expr)
  end
  function h.top(n)
    local p = need():profile()
    require("lupe.output.top").write(p, out, { top = n or 20 })
  end
  function h.flame(path)
    if type(path) ~= "string" then error("flame: expected a file name", 2) end
    local p = need():profile()
    local f, err = io.open(path, "w")
    if not f then error(err, 2) end
    require("lupe.output.svg").write(p, f)
    f:close()
    local n = 0
    for _, e in ipairs(p.entries) do n = n + e.count end
    out:write(fmt("%s: %d samples, %d stacks\n", path, n, #p.entries))
  end
  function h.ps()
    local ss = need()
    local procs, msg = require("lupe.native").repl.session_processes(ss._s)
    if not procs then error(msg, 2) end
    local samples, comms = {}, {}
    for _, e in ipairs(ss._s:entries(false)) do
      samples[e.pid] = (samples[e.pid] or 0) + e.count
      comms[e.pid] = e.comm
    end
    local rows, seen = {}, {}
    for _, p in ipairs(procs) do
      seen[p.pid] = true
      rows[#rows + 1] = { pid = p.pid, exited = p.exited, n = samples[p.pid] or 0 }
    end
    for pid, n in pairs(samples) do
      if not seen[pid] then rows[#rows + 1] = { pid = pid, n = n } end
    end
    sort(rows, function(a, b) if a.n ~= b.n then return a.n > b.n end return a.pid < b.pid end)
    out:write(fmt("%8s %9s  %s\n", "PID", "SAMPLES", "COMM"))
    for _, r in ipairs(rows) do
      local comm = comms[r.pid]
      if not comm then
        local f = io.open("/proc/" .. r.pid .. "/comm")
        comm = f and f:read("*l") or "?"
        if f then f:close() end
      end
      out:write(fmt("%8d %9d  %s%s\n", r.pid, r.n, comm, r.exited and " (exited)" or ""))
    end
    out:write(fmt("%d processes\n", #rows))
  end
  function h.maps(pid)
    if type(pid) ~= "number" then error("maps: expected a pid", 2) end
    local ms, msg = require("lupe.native").repl.session_mappings(need()._s, pid)
    if not ms then error(msg, 2) end
    local from_c = require("lupe.u64").from_c
    -- User-space addresses fit a double exactly (< 2^53).
    local function hx(v) return fmt("0x%x", tonumber(v)) end
    for _, m in ipairs(ms) do
      local start = from_c(m.vaddr)
      out:write(fmt("%18s-%-18s %10s  %s%s\n", hx(start), hx(start + from_c(m.length)),
        hx(from_c(m.file_offset)), m.path, m.deleted and " (deleted)" or ""))
    end
    out:write(fmt("%d executable mappings\n", #ms))
  end
  return h
end

local USAGE = "usage: lupe repl [--no-session] [-F HZ] [-p PID...] (see lupe repl --help)"

-- Parses the command line; returns opts or nil, message.
function M.parse_args(args)
  local o = { frequency = 99, session = true }
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--no-session" then
      o.session = false
    elseif a == "-F" then
      o.frequency = tonumber(args[i + 1])
      if not o.frequency or o.frequency < 1 then return nil, "-F needs a frequency in Hz" end
      i = i + 1
    elseif a == "-p" then
      o.pids = o.pids or {}
      local got = false
      while args[i + 1] and args[i + 1]:match("^[%d,]+$") do
        for p in args[i + 1]:gmatch("%d+") do o.pids[#o.pids + 1] = tonumber(p) got = true end
        i = i + 1
      end
      if not got then return nil, "-p needs a PID" end
    else
      return nil, "unknown argument '" .. a .. "'"
    end
    i = i + 1
  end
  return o
end

function M.main(args)
  local o, err = M.parse_args(args or {})
  if not o then
    io.stderr:write("lupe repl: ", err, "\n", USAGE, "\n")
    return 2
  end
  local lupe = require "lupe"
  local native = require("lupe.native").repl
  local s
  -- A pid that does not exist would leave an empty session running: say so instead.
  local gone = require("lupe.args").check_pids(o.session and o.pids)
  if gone then
    io.stderr:write("lupe repl: ", gone, "\n")
    return 2
  end
  if o.session then
    local msg
    s, msg = lupe.session{ frequency = o.frequency, target = o.pids and { pids = o.pids } or "system" }
    if not s then
      io.stderr:write("lupe repl: cannot start the session: ", tostring(msg),
        " (root is needed; --no-session gives a plain prompt)\n")
      return 1
    end
  end
  local env = setmetatable(M.helpers(s), { __index = _G })
  env.lupe, env.s = lupe, s

  local idle = s and function() s._s:poll(0) end
  local home = os.getenv("HOME")
  local ed = assert(native.editor{
    prompt = "lupe> ",
    history = home and home .. "/.lupe_history",
    idle = idle, idle_ms = 50,
    complete = function(text) return M.complete(text, env) end,
  })
  io.stdout:write(fmt("lupe %s: %s. help() lists the helpers; Ctrl-D exits.\n", lupe.version,
    s and fmt("sampling %s at %d Hz in the background", o.pids and "pids " .. concat(o.pids, ",")
      or "the whole system", s:frequency()) or "no session"))
  io.stdout:flush()

  local pending = nil -- the first lines of an incomplete chunk
  while true do
    local line, why = ed:read()
    if not line then
      if why == "eof" then break end
      if why ~= "interrupted" then io.stderr:write("lupe repl: ", tostring(why), "\n") break end
      pending = nil
      ed:set_prompt("lupe> ")
    else
      local src = pending and (pending .. "\n" .. line) or line
      if src:match("%S") then
        -- A Ctrl-C that ended an earlier line's s:run must not end this line's at once.
        require("lupe.native").session.clear_interrupted()
        native.sigint_guard(true)
        local ok, res, incomplete = M.evaluate(src, env)
        native.sigint_guard(false)
        if ok then
          pending = nil
          M.show(res)
        elseif incomplete then
          pending = src
        else
          pending = nil
          io.stdout:write("error: ", tostring(res), "\n")
        end
        if not pending then ed:add(src) end
        ed:set_prompt(pending and "  >> " or "lupe> ")
      end
      io.stdout:flush()
      if idle then idle() end
    end
  end
  io.stdout:write("\n")
  ed:close()
  if s then s:close() end
  return 0
end

return M
