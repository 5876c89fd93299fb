-- Soak: whole-system profiling at 99 Hz for a long time under a fork/exec storm and
-- library churn; prints, every interval, what must stay bounded.
--   sudo build/lupe run bench/soak.lua [--minutes N] [--interval SECONDS] [--hz HZ]
--                                      [--max-entries N] [--trim] [--export]
-- Defaults: 10 minutes, every 30 s, 99 Hz, the session's max_entries. Needs root, cc, and
-- bench/workloads/. (Columns a lupe without them lacks print 0: before/after runs.)
-- --trim: malloc_trim(0) before each row, a diagnosis of how much of RSS is free heap
-- glibc keeps (fragmentation), not something lupe does.
-- --export: what a continuous profiler does: every interval, write that interval's profile
-- (pprof, to a file here) and forget the aggregate (s:reset()). Without it, the aggregate
-- holds the whole run, as lupe record's does; traces and entries are then per interval.
-- (It collects Lua garbage after each export: the profile tables it made are dead.)
--
-- Load, started here and stopped at the end:
--   storm: processes of /bin/true, 16 at a time, as fast as they go (thousands a second);
--   churn: processes living 300 ms that dlopen/dlclose 16 distinct libraries in turn
--          (bench/workloads/churn.c, churnlib.c built 16 times), two at a time.
-- Columns (lupe's own process, read while it runs):
--   rss_MB    VmRSS of this process (lupe itself: session, process manager, symbols)
--   fds       open descriptors
--   bpfmap_MB memlock of the BPF maps it holds (/proc/self/fdinfo: map_type + memlock)
--   procs     processes tracked (alive), pend: exited but waiting for their samples
--   execs     executables loaded in the process manager; maps: live mappings
--   pm_MB     the process manager's own bookkeeping
--   traces, entries  unique traces and (trace, pid, comm) entries aggregated so far
--   folded    entries of exited processes folded so far into per-(trace, comm) entries
--   agg_MB    the aggregate's heap bytes (stats.aggregate_bytes: entries, traces, strings)
--   samples, lost, ev_lost  totals so far; new_procs: exec events in the interval
--   lua_MB    the Lua heap (collectgarbage "count")
--   heap_MB   bytes malloc has handed out and not had back (mallinfo2 uordblks);
--   arena_MB  and what it holds from the system (arena + mmap): the gap is fragmentation
local lupe = require "lupe"
local ffi = require "ffi"

ffi.cdef [[
struct lupe_soak_mallinfo2 { size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks,
  uordblks, fordblks, keepcost; };
struct lupe_soak_mallinfo2 mallinfo2(void);
int malloc_trim(size_t pad);
]]

local minutes, interval, hz, max_entries, trim, export = 10, 30, 99, nil, false, false
local argv = { ... }
local i = 1
while i <= #argv do
  local a, v = argv[i], tonumber(argv[i + 1])
  if a == "--trim" then trim, v = true, nil
  elseif a == "--export" then export, v = true, nil
  elseif a == "--minutes" and v then minutes = v
  elseif a == "--interval" and v then interval = v
  elseif a == "--hz" and v then hz = math.floor(v)
  elseif a == "--max-entries" and v then max_entries = v
  else
    io.stderr:write("usage: lupe run bench/soak.lua [--minutes N] [--interval S] [--hz HZ] " ..
                    "[--max-entries N] [--trim] [--export]\n")
    os.exit(2)
  end
  i = i + (v and 2 or 1)
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local s = p:read("*a")
  p:close()
  return s
end

local here = (arg and arg[0] or "bench/soak.lua"):match("^(.*)/[^/]*$") or "."
local tmp = sh("mktemp -d"):gsub("%s+$", "")
local libs = {}
for n = 1, 16 do
  libs[n] = ("%s/libchurn%d.so"):format(tmp, n)
  assert(os.execute(("cc -O2 -g -shared -fPIC -DLIBNO=%d -o %s %s/workloads/churnlib.c")
    :format(n, libs[n], here)) == 0, "cannot build churnlib.c")
end
assert(os.execute(("cc -O2 -g -o %s/churn %s/workloads/churn.c -ldl"):format(tmp, here)) == 0,
  "cannot build churn.c")

local s, msg = lupe.session{ frequency = hz, target = "system", max_entries = max_entries }
if not s then
  io.stderr:write("soak: ", msg, "\n")
  os.exit(1)
end

-- The load runs in its own process group, killed as a whole at the end.
local load_script = ([[
while :; do for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do /bin/true & done; wait; done &
while :; do %s/churn 300 %s & %s/churn 300 %s; wait; done &
wait]]):format(tmp, table.concat(libs, " "), tmp, table.concat(libs, " "))
local f = assert(io.open(tmp .. "/load.sh", "w"))
f:write(load_script)
f:close()
local load_pgid = tonumber(sh(("setsid sh %s/load.sh >/dev/null 2>&1 & echo $!"):format(tmp)))

local self_pid do
  local fh = assert(io.open("/proc/self/stat"))
  self_pid = fh:read("*l"):match("^%d+")
  fh:close()
end

local function status_kb(field)
  local fh = io.open("/proc/self/status")
  local text = fh:read("*a")
  fh:close()
  return tonumber(text:match(field .. ":%s*(%d+)")) or 0
end

local function fds()
  return tonumber(sh(("ls /proc/%s/fd | wc -l"):format(self_pid))) or 0
end

local function bpf_map_bytes()
  return tonumber(sh(("awk 'FNR == 1 { if (m) s += ml; m = 0; ml = 0 } " ..
    "/^map_type:/ { m = 1 } /^memlock:/ { ml = $2 } END { if (m) s += ml; print s + 0 }' " ..
    "/proc/%s/fdinfo/* 2>/dev/null"):format(self_pid))) or 0
end

local header = ("%6s %7s %5s %9s %6s %5s %6s %6s %6s %7s %8s %8s %6s %9s %7s %7s %9s %6s " ..
                "%7s %8s")
  :format("t_s", "rss_MB", "fds", "bpfmap_MB", "procs", "pend", "execs", "maps", "pm_MB",
          "traces", "entries", "folded", "agg_MB", "samples", "lost", "ev_lost", "new_procs",
          "lua_MB", "heap_MB", "arena_MB")
print(("soak: %g min at %d Hz, whole system, %d CPUs; load pgid %s; lupe pid %s")
  :format(minutes, hz, tonumber(sh("nproc")) or 0, tostring(load_pgid), self_pid))
print(header)
io.stdout:flush()

local now = require("lupe.session").now
local started = now()
local last_execs = 0
local function row()
  local st = s:stats()
  local pm = st.procmgr
  local t = now() - started
  if trim then ffi.C.malloc_trim(0) end
  local mi = ffi.C.mallinfo2()
  print(("%6.0f %7.1f %5d %9.1f %6d %5d %6d %6d %6.1f %7d %8d %8d %6.1f %9d %7d %7d %9d %6.1f " ..
         "%7.1f %8.1f"):format(
    t, status_kb("VmRSS") / 1024, fds(), bpf_map_bytes() / 1048576, pm.processes,
    pm.exited_pending, pm.executables, pm.mappings, pm.memory_bytes / 1048576, st.traces,
    st.entries, st.folded_entries or 0, (st.aggregate_bytes or 0) / 1048576, st.samples, st.lost,
    st.events_lost, st.exec_events - last_execs,
    collectgarbage("count") / 1024, tonumber(mi.uordblks) / 1048576,
    tonumber(mi.arena + mi.hblkhd) / 1048576))
  io.stdout:flush()
  last_execs = st.exec_events
end

local exported = 0
s:on_interval(interval, function()
  row()
  if not export then return end
  local out = assert(io.open(tmp .. "/export.pb.gz", "wb"))
  require("lupe.output.pprof").write(s:profile(), out)
  exported = exported + out:seek("end")
  out:close()
  s:reset()
  -- The export's profile tables (~4 KB a trace) are garbage now: collect them here rather
  -- than let the Lua heap's high-water mark (and RSS) follow the collector's pace.
  collectgarbage()
end)
local ok, err = pcall(function() return s:run{ duration = minutes * 60 } end)
if load_pgid then os.execute(("kill -TERM -%d 2>/dev/null"):format(load_pgid)) end
os.execute("sleep 0.5; rm -rf " .. tmp)
if not ok then
  io.stderr:write("soak: ", tostring(err), "\n")
  os.exit(1)
end
row()
local st = s:stats()
-- How many unique traces hold a frame no mapping covered (a process gone before its maps
-- were read): their addresses, randomized per process, make each such trace unique.
local unknown_traces = 0
for idx = 1, st.traces do
  for _, fr in ipairs(s:trace(idx).frames) do
    if fr.kind == "unknown" then unknown_traces = unknown_traces + 1 break end
  end
end
print(("soak: %d of %d traces have unknown frames"):format(unknown_traces, st.traces))
if export then
  print(("soak: exported %d pprof bytes in %d resets"):format(exported, st.resets or 0))
end
print(("soak: done; %d samples, %d lost, %d exec events, %d exit events, %d unknown frames, " ..
  "%d entries folded in %d folds, %.0f aggregate bytes per trace")
  :format(st.samples, st.lost, st.exec_events, st.exit_events, st.unknown_frames,
          st.folded_entries or 0, st.folds or 0,
          (st.aggregate_bytes or 0) / math.max(1, st.traces)))
s:close()
