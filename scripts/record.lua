-- profile a command, some processes, a cgroup or the whole system
local lupe = require "lupe"
local output = require "lupe.output"

local USAGE = [=[
usage: lupe record [OPTIONS] [-- COMMAND [ARGS...]]

Samples stacks (kernel and user) on every CPU and writes a profile.
  With COMMAND: profiles it and all its descendants until it exits, and exits with
  its exit status. With -p or -G: those processes until -d elapses, they all exit,
  or Ctrl-C. With neither: the whole system until -d elapses or Ctrl-C.

options:
  -F, --frequency HZ     samples per second per CPU (default 99)
  -d, --duration SECS    stop after SECS seconds
  -p, --pid PID[,PID...] profile these processes
  -G, --cgroup DIR       profile a cgroup v2 directory and everything below it
  -f, --format FORMAT    folded (collapsed stacks), top (a summary), pprof, speedscope,
                         svg (interactive flame graph) or json; default: top on stdout,
                         folded with -o
  -o, --output FILE      write the profile to FILE instead of stdout
  -n, --top N            lines in the top summary (default 25)
      --raw FILE         also write a raw recording to FILE (samples, process events, and
                         the mappings and symbols they need), which replays offline and
                         unprivileged with the same results: LUPE_REPLAY=FILE lupe record
                         -o OUT (or lupe run --replay FILE SCRIPT); see docs/raw-format.md
      --no-kernel        user stacks only
      --fp               user stacks by frame pointers, not the native unwinder
  -h, --help             this text

Ctrl-C stops sampling and still writes the profile. A summary of what was sampled,
lost and filtered goes to stderr.
]=]

local function die(msg)
  io.stderr:write("lupe record: ", msg, "\n")
  os.exit(2)
end

local function parse(argv)
  local o = { frequency = 99, kernel = true, top = 25, unwind = true }
  local i = 1
  local function value(name)
    i = i + 1
    local v = argv[i]
    if v == nil then die("option " .. name .. " needs a value") end
    return v
  end
  local function number(name, v, min)
    local n = tonumber(v)
    if not n or n < min then die(("%s: expected a number >= %s, got '%s'"):format(name, min, v)) end
    return n
  end
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      o.command = { unpack(argv, i + 1) }
      if #o.command == 0 then die("-- must be followed by a command") end
      break
    elseif a == "-h" or a == "--help" then
      io.stdout:write(USAGE)
      os.exit(0)
    elseif a == "-F" or a == "--frequency" then
      o.frequency = math.floor(number(a, value(a), 1))
    elseif a == "-d" or a == "--duration" then
      o.duration = number(a, value(a), 0.001)
    elseif a == "-p" or a == "--pid" then
      o.pids = o.pids or {}
      for p in value(a):gmatch("[^,]+") do
        local pid = tonumber(p)
        if not pid or pid <= 0 or pid % 1 ~= 0 then die("-p: not a pid: '" .. p .. "'") end
        o.pids[#o.pids + 1] = pid
      end
    elseif a == "-G" or a == "--cgroup" then
      o.cgroup = value(a)
    elseif a == "-f" or a == "--format" then
      o.format = value(a)
    elseif a == "-o" or a == "--output" then
      o.output = value(a)
    elseif a == "-n" or a == "--top" then
      o.top = math.floor(number(a, value(a), 1))
    elseif a == "--raw" then
      o.raw = value(a)
    elseif a == "--no-kernel" then
      o.kernel = false
    elseif a == "--fp" then
      o.unwind = false
    elseif a:sub(1, 1) == "-" then
      die("unknown option '" .. a .. "' (see lupe record --help)")
    else
      -- A command without "--" is accepted when it cannot be taken for an option.
      o.command = { unpack(argv, i) }
      break
    end
    i = i + 1
  end
  local modes = (o.command and 1 or 0) + (o.pids and 1 or 0) + (o.cgroup and 1 or 0)
  if modes > 1 then die("choose one of COMMAND, -p and -G") end
  o.format = o.format or (o.output and "folded" or "top")
  return o
end

local opts = parse(arg)
local fmt_mod, ferr = output.get(opts.format)
if not fmt_mod then die(ferr) end
-- Open the output first: a bad path fails before anything is sampled.
local fh = io.stdout
if opts.output then
  local f, err = io.open(opts.output, "w")
  if not f then die("cannot write the profile: " .. err) end
  fh = f
end

local target = "system"
if opts.command then target = { command = opts.command }
elseif opts.pids then target = { pids = opts.pids }
elseif opts.cgroup then target = { cgroup = opts.cgroup } end

local s, msg = lupe.session{ frequency = opts.frequency, kernel = opts.kernel, target = target,
                            unwind = opts.unwind, raw = opts.raw }
if not s then
  io.stderr:write("lupe record: ", msg, "\n")
  return opts.command and 127 or 1
end

local function any_alive(pids)
  for _, pid in ipairs(pids) do
    local f = io.open("/proc/" .. pid .. "/stat")
    if f then
      local st = f:read("*a")
      f:close()
      if not st:match("%) [ZX] ") then return true end
    end
  end
  return false
end

local profile = s:run{ duration = opts.duration,
                       stop = opts.pids and function() return not any_alive(opts.pids) end }
fmt_mod.write(profile, fh, { top = opts.top })
if fh ~= io.stdout then fh:close() end

local st = profile.stats
local reasons = {}
for name, n in pairs(st.unwind_err or {}) do
  if n > 0 then reasons[#reasons + 1] = ("%s %d"):format(name:gsub("_", " "), n) end
end
table.sort(reasons)
io.stderr:write(("lupe record: %d samples (%d lost, %d filtered out, %d idle), " ..
  "%d truncated stacks (%d kernel, %d user), %d user stacks unwound natively, %d frames " ..
  "by frame pointers, unwinding errors: %s; %d user / %d kernel stack errors, %d unknown " ..
  "frames; %d processes tracked, %d unique stacks%s\n"):format(
  st.samples, st.lost, st.filtered, st.idle, st.kernel_trunc + st.user_trunc, st.kernel_trunc,
  st.user_trunc, st.unwind_samples or 0, st.fallback_frames or 0,
  #reasons > 0 and table.concat(reasons, ", ") or "none",
  st.user_stack_err, st.kernel_stack_err, st.unknown_frames,
  st.procmgr.processes + st.procmgr.exited_pending, st.traces,
  opts.output and (", written to " .. opts.output) or ""))
-- Folding (lupe.session max_entries), only where it happened: exited processes' samples are
-- all there, under pid 0.
if (st.folded_entries or 0) > 0 then
  io.stderr:write(("lupe record: %d entries of exited processes folded into pid 0 " ..
    "(%d folds), counts kept\n"):format(st.folded_entries, st.folds))
end
-- APM correlation, only where an agent was found: what the agents were told, what not.
local apm = st.apm
if apm and apm.agents_found > 0 then
  io.stderr:write(("lupe record: APM: %d agents (services: %d), %d samples in transactions, " ..
    "%d datagrams sent (%d samples), %d dropped (%d samples), %d failed, %d socket paths " ..
    "refused\n"):format(apm.agents_found, apm.services, apm.samples, apm.sent,
    apm.sent_samples, apm.dropped, apm.dropped_samples, apm.errors, apm.rejected_paths))
end
if opts.raw then
  io.stderr:write(("lupe record: raw recording: %d bytes in %s%s\n"):format(st.raw_bytes, opts.raw,
    st.raw_write_errors > 0 and (", %d records NOT written"):format(st.raw_write_errors) or ""))
end
s:close()
return profile.exit_status or 0
