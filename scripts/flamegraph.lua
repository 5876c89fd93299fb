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
local args = require "lupe.args"

local USAGE = [=[
usage: lupe flamegraph [-F HZ] [-d SECONDS] [-p PID,...] [--filter EXPR] [--no-kernel]
                       [-o FILE.svg] [-- COMMAND [ARGS...]]

Writes an SVG flame graph (default: flamegraph.svg) once sampling ends: after -d, when
COMMAND or every -p process has exited, or on Ctrl-C.

  -F, --frequency HZ     samples per second per CPU (default 99)
  -d, --duration SECS    stop after SECS seconds
  -p, --pid PID[,PID...] only these processes (they must exist)
  -o, --output FILE      the SVG file (replaced only once the graph is complete)
      --filter EXPR      keep the samples EXPR matches (see lupe.filter)
      --no-kernel        user stacks only
]=]

local o = args.cli({
  name = "flamegraph", usage = USAGE, command = true,
  { "-F", "--frequency", key = "frequency", kind = "frequency", default = 99 },
  { "-d", "--duration", key = "duration", kind = "number", min = 0.001 },
  { "-o", "--output", key = "output", kind = "string", default = "flamegraph.svg" },
  { "-p", "--pid", key = "pids", kind = "pids" },
  { nil, "--filter", key = "filter", kind = "string" },
  { nil, "--no-kernel", key = "no_kernel", kind = "flag" },
}, arg)
local function die(msg) args.die("flamegraph", msg) end
if o.command and o.pids then die("choose one of COMMAND and -p") end
local gone = args.check_pids(o.pids)
if gone then die(gone) end
if not o.duration and not o.command and not o.pids then
  io.stderr:write("lupe flamegraph: sampling the whole system until Ctrl-C\n")
end

-- A temporary file beside -o until the graph is complete: an earlier graph survives a
-- failed start or a failed write.
local out, ferr = args.output(o.output)
if not out then die("cannot write '" .. o.output .. "': " .. tostring(ferr)) end
local target = o.command and { command = o.command } or o.pids and { pids = o.pids } or "system"
local s, err = lupe.session{ frequency = o.frequency, kernel = not o.no_kernel,
                             target = target }
if not s then
  out:discard()
  io.stderr:write("lupe flamegraph: ", tostring(err), "\n")
  return (o.command and tostring(err):match("^cannot run '")) and 127 or 1
end
if o.filter then
  local ok, e = pcall(s.filter, s, o.filter)
  if not ok then s:close() die(tostring(e)) end
end
local p = s:run{ duration = o.duration, stop = args.until_gone(o.pids) }
local wok, werr = pcall(output.get("svg").write, p, out.fh, {})
if wok then wok, werr = out:commit() else out:discard() end
if not wok then
  io.stderr:write("lupe flamegraph: cannot write '", o.output, "': ", tostring(werr), "\n")
  s:close()
  return 1
end
local n = 0
for _, e in ipairs(p.entries) do n = n + e.count end
io.stderr:write(("lupe flamegraph: %d samples (%d lost, %d filtered), %d stacks, written to %s\n")
  :format(n, p.stats.lost, p.stats.filtered, #p.entries, o.output))
s:close()
return p.exit_status or 0
