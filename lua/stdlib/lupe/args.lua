-- The command-line layer the scripts share: one option parser, the checks on pids and
-- frequencies, a profile file that replaces the old one only once it is complete, and
-- the output format an extension stands for.
--
--   local args = require "lupe.args"
--   local o = args.cli{ name = "top", usage = USAGE, command = true,
--     { "-F", "--frequency", key = "frequency", kind = "frequency", default = 99 },
--     { "-p", "--pid", key = "pids", kind = "pids" },
--     { nil, "--filter", key = "filter", kind = "string" },
--   }
--
-- Option kinds: "number" (min, max, above = exclusive minimum), "integer" (same bounds;
-- floor = true floors a fraction instead of refusing it),
-- "frequency" (Hz, floored, from 1 to the kernel's perf_event_max_sample_rate),
-- "pids" (PID[,PID...], repeatable, appended), "string", "flag" (true when given).
-- "--long=value" works for every option that takes a value. A string option's value may
-- not start with '-' (it is the next option, forgotten value); a number's may (then it
-- is checked as a number: "-F -5" says "expected a number >= 1, got '-5'").
local M = {}

local tonumber, ipairs, pairs, floor, huge = tonumber, ipairs, pairs, math.floor, math.huge
local open, fmt, unpack = io.open, string.format, unpack

M.MAX_RATE_PATH = "/proc/sys/kernel/perf_event_max_sample_rate"

-- The kernel's limit on a perf event's samples per second, or nil when unknown.
function M.max_frequency(path)
  local f = open(path or M.MAX_RATE_PATH)
  if not f then return nil end
  local v = tonumber(f:read("*l") or "")
  f:close()
  return v
end

local function describe_min(o)
  if o.above then return "> " .. o.above end
  if o.min then return ">= " .. o.min end
  return nil
end

-- Converts and checks one value; returns it or nil, message (without the option name).
local function convert(o, v, spec)
  local kind = o.kind
  if kind == "string" then return v end
  if kind == "pids" then
    local list = {}
    for p in (v .. ","):gmatch("([^,]*),") do
      local pid = tonumber(p)
      if not pid or pid <= 0 or pid % 1 ~= 0 or pid > 4194304 then
        return nil, fmt("not a pid: '%s'", p)
      end
      list[#list + 1] = pid
    end
    return list
  end
  local n = tonumber(v)
  -- tonumber accepts "0x10", " 5" and "inf": a command line means decimal numbers.
  if n and (n ~= n or n == huge or n == -huge or not v:match("^%s*[-+]?[%d.]+[eE]?[-+]?%d*%s*$")) then
    n = nil
  end
  local integer = kind == "integer" or kind == "frequency"
  -- A frequency is floored (99.5 Hz samples at 99), as the scripts always did.
  local floored = o.floor or kind == "frequency"
  local what = (integer and not floored) and "an integer" or "a number"
  local min = o.min
  if kind == "frequency" then min = min or 1 end
  local bound = describe_min({ min = min, above = o.above })
  local expect = bound and (what .. " " .. bound) or what
  if not n then return nil, fmt("expected %s, got '%s'", expect, v) end
  if floored then n = floor(n) end
  if integer and n % 1 ~= 0 then return nil, fmt("expected %s, got '%s'", expect, v) end
  if (min and n < min) or (o.above and n <= o.above) then
    return nil, fmt("expected %s, got '%s'", expect, v)
  end
  if o.max and n > o.max then return nil, fmt("at most %s, got '%s'", o.max, v) end
  if kind == "frequency" then
    local limit = (spec and spec.max_frequency) or M.max_frequency()
    if limit and n > limit then
      return nil, fmt("%d Hz is above the kernel's limit of %d Hz (%s)", n, limit,
                      M.MAX_RATE_PATH)
    end
  end
  return n
end
M.convert = convert

local function takes_negative(o)
  return o.kind == "number" or o.kind == "integer" or o.kind == "frequency" or o.kind == "pids"
end

local parse

-- Parses argv by spec. Returns opts (defaults filled in; opts.command = the words after
-- "--", or from the first word that is no option when spec.command == "bare"), or nil,
-- message. { help = true } for -h/--help, also when the line has errors besides.
function M.parse(spec, argv)
  local o, err = parse(spec, argv)
  if o then return o end
  for _, a in ipairs(argv) do
    if a == "--" then break end
    if a == "-h" or a == "--help" then return { help = true } end
  end
  return nil, err
end

function parse(spec, argv)
  local by_name, opts = {}, {}
  for _, o in ipairs(spec) do
    if o[1] then by_name[o[1]] = o end
    if o[2] then by_name[o[2]] = o end
    if o.default ~= nil then opts[o.key] = o.default end
  end
  local see = spec.name and (" (see lupe " .. spec.name .. " --help)") or ""
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-h" or a == "--help" then return { help = true } end
    if a == "--" then
      if not spec.command then return nil, "unexpected '--': this command runs no COMMAND" end
      opts.command = { unpack(argv, i + 1) }
      if #opts.command == 0 then return nil, "-- must be followed by a command" end
      break
    end
    local name, inline = a, nil
    if a:sub(1, 2) == "--" then
      local eq = a:find("=", 3, true)
      if eq then name, inline = a:sub(1, eq - 1), a:sub(eq + 1) end
    end
    local o = by_name[name]
    if not o then
      if a:sub(1, 1) == "-" and a ~= "-" then return nil, fmt("unknown option '%s'%s", a, see) end
      if spec.command == "bare" then
        -- A command without "--" is accepted when it cannot be taken for an option.
        opts.command = { unpack(argv, i) }
        break
      end
      return nil, fmt("unexpected argument '%s'%s", a, see)
    end
    if o.kind == "flag" then
      if inline then return nil, fmt("%s takes no value", name) end
      opts[o.key] = true
    else
      local v = inline
      if not v then
        v = argv[i + 1]
        if v == nil or v == "--" or (v:sub(1, 1) == "-" and #v > 1 and
            not (takes_negative(o) and v:match("^%-[%d.]"))) then
          return nil, fmt("option %s needs a value", a)
        end
        i = i + 1
      end
      if v == "" then return nil, fmt("option %s needs a value", name) end
      local val, err = convert(o, v, spec)
      if val == nil then return nil, name .. ": " .. err end
      if o.kind == "pids" then
        local list = opts[o.key] or {}
        for _, p in ipairs(val) do list[#list + 1] = p end
        val = list
      end
      opts[o.key] = val
    end
    i = i + 1
  end
  return opts
end

local pending = setmetatable({}, { __mode = "k" })   -- outputs not yet committed

-- "lupe NAME: msg" on stderr, exit 2: the status for a bad command line. Outputs not yet
-- committed are discarded first (their old files stay).
function M.die(name, msg)
  for out in pairs(pending) do out:discard() end
  io.stderr:write("lupe ", name, ": ", msg, "\n")
  io.stderr:flush()
  os.exit(2)
end

-- parse(), then --help prints spec.usage (exit 0) and an error exits 2.
function M.cli(spec, argv)
  local o, err = M.parse(spec, argv or {})
  if not o then M.die(spec.name or "?", err) end
  if o.help then
    io.stdout:write(spec.usage or "")
    os.exit(0)
  end
  return o
end

local function proc_stat(pid)
  local f = open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local st = f:read("*a")
  f:close()
  return st
end

-- nil when every pid names a running process, else "no such process: PID".
function M.check_pids(pids)
  for _, pid in ipairs(pids or {}) do
    local st = proc_stat(pid)
    if not st or st:match("%) [ZX] ") then return "no such process: " .. pid end
  end
  return nil
end

-- True while one of pids runs (a zombie has ended: only its parent has yet to reap it).
function M.any_alive(pids)
  for _, pid in ipairs(pids) do
    local st = proc_stat(pid)
    if st and not st:match("%) [ZX] ") then return true end
  end
  return false
end

-- A stop function for s:run{stop=} that ends the run once all pids have exited (nil when
-- there are none: the run ends some other way).
function M.until_gone(pids)
  if not pids then return nil end
  return function() return not M.any_alive(pids) end
end

-- The output format a file name stands for: .svg svg, .pb.gz and .pprof pprof, .jsonl
-- json (JSON Lines), .speedscope.json speedscope, anything else folded.
function M.format_for(path)
  local p = (path or ""):lower()
  if p:match("%.svg$") then return "svg" end
  if p:match("%.pb%.gz$") or p:match("%.pprof$") then return "pprof" end
  if p:match("%.speedscope%.json$") then return "speedscope" end
  if p:match("%.jsonl$") then return "json" end
  return "folded"
end

local getpid
do
  local ok, ffi = pcall(require, "ffi")
  if ok then
    pcall(ffi.cdef, "int getpid(void);")
    getpid = function() return ffi.C.getpid() end
  else
    getpid = function() return floor(os.clock() * 1e6) end
  end
end

-- Special files are written in place: a rename would replace /dev/null itself.
local function in_place(path)
  return path:match("^/dev/") or path:match("^/proc/")
end

local Output = {}
Output.__index = Output

-- A profile file that replaces path only when complete: writes go to a temporary file
-- beside it (same directory, so the rename is atomic), :commit() renames it over path,
-- :discard() removes it, so a failed start or a late error leaves the old file as it was.
-- The caller owns the object and must call one of the two. Returns it or nil, message.
function M.output(path)
  if in_place(path) then
    local fh, err = open(path, "w")
    if not fh then return nil, err end
    return setmetatable({ fh = fh, path = path }, Output)
  end
  -- A directory would only fail the rename at the end, after the sampling.
  local probe = open(path)
  if probe then
    local _, _, code = probe:read(0)
    probe:close()
    if code == 21 then return nil, path .. ": Is a directory" end
  end
  local dir, base = path:match("^(.*/)([^/]*)$")
  dir, base = dir or "", base or path
  if base == "" then return nil, path .. ": is a directory" end
  local tmp = fmt("%s.%s.lupe-%d.tmp", dir, base, getpid())
  local fh, err = open(tmp, "w")
  if not fh then
    -- Say which path failed in the user's terms: the directory is what is unwritable.
    return nil, (err or "?"):gsub("^" .. tmp:gsub("%p", "%%%0"), path)
  end
  local out = setmetatable({ fh = fh, path = path, tmp = tmp }, Output)
  pending[out] = true
  return out
end

-- Closes and moves the file into place; returns true or nil, message (a failed close
-- removes the temporary file; a failed rename keeps it and names it in the message).
function Output:commit()
  if not self.fh then return nil, "already closed" end
  pending[self] = nil
  local ok, err = self.fh:close()
  self.fh = nil
  if not ok then
    if self.tmp then os.remove(self.tmp) end
    return nil, err
  end
  if self.tmp then
    local rok, rerr = os.rename(self.tmp, self.path)
    if not rok then
      -- The profile is complete: keep it where it is rather than lose it.
      return nil, ("%s (the profile is in %s)"):format(rerr, self.tmp)
    end
  end
  return true
end

-- Closes and removes the temporary file; path keeps its old contents. Idempotent.
function Output:discard()
  pending[self] = nil
  if self.fh then self.fh:close() self.fh = nil end
  if self.tmp then os.remove(self.tmp) self.tmp = nil end
end

return M
