-- an interactive SVG flame graph of a command, some processes or the system
--
-- Samples for -d seconds (or until COMMAND exits, or Ctrl-C), then writes a self-contained
-- SVG flame graph (click to zoom, search) through lupe.output.svg: one box per function
-- on a stack, as wide as its share of the samples.
--
--   lupe flamegraph -d 10 -o system.svg
--   lupe flamegraph -F 499 -o make.svg -- make -j2
--   lupe flamegraph -p 1234 --filter "frame ~ 'malloc*'" -o malloc.svg
local lupe = require "lupe"
local output = require "lupe.output"

local USAGE = [=[
usage: lupe flamegraph [-F HZ] [-d SECONDS] [-p PID,...] [--filter EXPR] [--no-kernel]
                       [-o FILE.svg] [-- COMMAND [ARGS...]]

Writes an SVG flame graph (default: flamegraph.svg).
]=]

local function die(msg)
  io.stderr:write("lupe flamegraph: ", msg, "\n")
  os.exit(2)
end

local o = { frequency = 99, output = "flamegraph.svg" }
local i = 1
while i <= #arg do
  local a, v = arg[i], arg[i + 1]
  if a == "-h" or a == "--help" then io.stdout:write(USAGE) os.exit(0)
  elseif a == "--" then o.command = { unpack(arg, i + 1) } break
  elseif a == "-F" then o.frequency = tonumber(v) or die("-F: a number") i = i + 1
  elseif a == "-d" then o.duration = tonumber(v) or die("-d: a number") i = i + 1
  elseif a == "-o" then o.output = v or die("-o: a file") i = i + 1
  elseif a == "-p" then
    o.pids = {}
    for p in (v or ""):gmatch("[^,]+") do o.pids[#o.pids + 1] = tonumber(p) or die("-p: not a pid") end
    i = i + 1
  elseif a == "--filter" then o.filter = v or die("--filter: an expression") i = i + 1
  elseif a == "--no-kernel" then o.no_kernel = true
  else die("unknown argument '" .. a .. "'") end
  i = i + 1
end
if not o.duration and not o.command and not o.pids then
  io.stderr:write("lupe flamegraph: sampling the whole system until Ctrl-C\n")
end

local fh, ferr = io.open(o.output, "w")
if not fh then die("cannot write '" .. o.output .. "': " .. tostring(ferr)) end
local target = o.command and { command = o.command } or o.pids and { pids = o.pids } or "system"
local s, err = lupe.session{ frequency = math.floor(o.frequency), kernel = not o.no_kernel,
                             target = target }
if not s then die(err) end
if o.filter then
  local ok, e = pcall(s.filter, s, o.filter)
  if not ok then die(tostring(e)) end
end
s:on_end(function(profile) output.get("svg").write(profile, fh, {}) end)
local p = s:run{ duration = o.duration }
fh:close()
local n = 0
for _, e in ipairs(p.entries) do n = n + e.count end
io.stderr:write(("lupe flamegraph: %d samples (%d lost, %d filtered), %d stacks, written to %s\n")
  :format(n, p.stats.lost, p.stats.filtered, #p.entries, o.output))
s:close()
return p.exit_status or 0
