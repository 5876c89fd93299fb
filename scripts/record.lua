-- profile a command, some processes, a cgroup or the whole system
local lupe = require "lupe"
local output = require "lupe.output"
local args = require "lupe.args"

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
                         svg (interactive flame graph) or json (JSON Lines: one object a
                         line); default: top on stdout; with -o, the format FILE's
                         extension names: .svg svg, .pb.gz or .pprof pprof,
                         .speedscope.json speedscope, .jsonl json, anything else folded
  -o, --output FILE      write the profile to FILE instead of stdout (FILE is replaced
                         only once the profile is complete)
  -n, --top N            lines in the top summary (default 25)
      --raw FILE         also write a raw recording to FILE (samples, process events, and
                         the mappings and symbols they need), which replays offline and
                         unprivileged with the same results: LUPE_REPLAY=FILE lupe record
                         -o OUT (or lupe run --replay FILE SCRIPT); see docs/raw-format.md
      --no-kernel        user stacks only
      --fp               user stacks by frame pointers, not the native unwinder
  -h, --help             this text

Values: -F 10 or --frequency=10; -F is at most the kernel's
/proc/sys/kernel/perf_event_max_sample_rate. Every -p PID must exist at the start.
lupe top and lupe flamegraph take the same -F, -d, -p and --no-kernel.

Ctrl-C (or SIGTERM, SIGHUP) stops sampling and still writes the profile. A summary of
what was sampled, lost and filtered goes to stderr.

Exit status: COMMAND's own; 128 + the signal (130 for Ctrl-C) when lupe was interrupted
before COMMAND ended (COMMAND is then killed); 127 when COMMAND cannot be run; 2 for a
bad command line (options, a pid that does not exist); 1 when sampling fails; 3 when a
replayed recording (LUPE_REPLAY) is cut short or damaged: the profile up to the damage is
written, and its counts stop there.
]=]

local SPEC = {
  name = "record", usage = USAGE, command = "bare",
  { "-F", "--frequency", key = "frequency", kind = "frequency", default = 99 },
  { "-d", "--duration", key = "duration", kind = "number", min = 0.001 },
  { "-p", "--pid", key = "pids", kind = "pids" },
  { "-G", "--cgroup", key = "cgroup", kind = "string" },
  { "-f", "--format", key = "format", kind = "string" },
  { "-o", "--output", key = "output", kind = "string" },
  { "-n", "--top", key = "top", kind = "integer", min = 1, floor = true, default = 25 },
  { nil, "--raw", key = "raw", kind = "string" },
  { nil, "--no-kernel", key = "no_kernel", kind = "flag" },
  { nil, "--fp", key = "fp", kind = "flag" },
}

local function die(msg) args.die("record", msg) end

local opts = args.cli(SPEC, arg)
local modes = (opts.command and 1 or 0) + (opts.pids and 1 or 0) + (opts.cgroup and 1 or 0)
if modes > 1 then die("choose one of COMMAND, -p and -G") end
-- Without -f, the extension of -o names the format (a.svg, a.pb.gz...), else folded.
opts.format = opts.format or (opts.output and args.format_for(opts.output) or "top")
local fmt_mod, ferr = output.get(opts.format)
if not fmt_mod then die(ferr) end
local gone = args.check_pids(opts.pids)
if gone then die(gone) end
-- The output is a temporary file beside -o until the profile is complete: a bad path
-- fails before anything is sampled, and a failed run leaves an earlier profile intact.
local fh, out = io.stdout, nil
if opts.output then
  local oerr
  out, oerr = args.output(opts.output)
  if not out then die("cannot write the profile: " .. oerr) end
  fh = out.fh
end

local target = "system"
if opts.command then target = { command = opts.command }
elseif opts.pids then target = { pids = opts.pids }
elseif opts.cgroup then target = { cgroup = opts.cgroup } end

local s, msg = lupe.session{ frequency = opts.frequency, kernel = not opts.no_kernel,
                            target = target, unwind = not opts.fp, raw = opts.raw }
if not s then
  if out then out:discard() end
  io.stderr:write("lupe record: ", msg, "\n")
  -- 127 only for a COMMAND that cannot be run, as a shell says it; 1 for the rest.
  return (opts.command and msg:match("^cannot run '")) and 127 or 1
end

local profile = s:run{ duration = opts.duration, stop = args.until_gone(opts.pids) }
local wok, werr = pcall(fmt_mod.write, profile, fh, { top = opts.top })
if out then
  if wok then wok, werr = out:commit() else out:discard() end
end
if not wok then
  io.stderr:write("lupe record: cannot write the profile: ", tostring(werr), "\n")
  s:close()
  return 1
end

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
-- A replay of a cut or damaged recording: what it held is written, but it is not the whole
-- run (the reader said where it stopped, above).
if (st.replay_errors or 0) > 0 then
  io.stderr:write(("lupe record: the recording is cut short or damaged (%d errors): the " ..
    "profile and its counts stop there\n"):format(st.replay_errors))
  return 3
end
-- Interrupted before COMMAND ended (it was killed with the session): 128 + the signal, as a
-- shell reports a command the signal ended, not success.
local _, sig = require("lupe.native").session.interrupted()
if opts.command and profile.exit_status == nil and sig then return 128 + sig end
return profile.exit_status or 0
