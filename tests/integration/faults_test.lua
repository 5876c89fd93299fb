-- Faults a profiler meets in production, each end to end through `lupe record`: processes
-- that exit while they are being synchronized, a PID reused by another program, signals
-- at random moments (the profile is flushed, nothing of lupe is left in the kernel), and
-- the command's own descriptors. Needs root; SKIPs (visibly) without it. The ring-buffer
-- overflow case is C (test_faults.c): lupe record has no option for the ring's size.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check

local tmp, built

-- One source, several names for its spinning function (see faults_work.c).
local function build()
  if built ~= nil then return built end
  tmp = t.tmpdir()
  local cmds = {}
  for _, name in ipairs({ "alpha", "beta", "storm" }) do
    cmds[#cmds + 1] = ("gcc -O2 -g -fno-omit-frame-pointer -DSPIN=%s_spin -o %s/%s_work %s/faults_work.c")
      :format(name, tmp, name, dir)
  end
  t.build(cmds)
  built = true
  return built
end

local function needs_root()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  build()
end

local slurp = t.slurp

local function sleep(s) os.execute(("sleep %.3f"):format(s)) end

local function total(rows, pred)
  local n = 0
  for _, r in ipairs(rows) do if pred(r) then n = n + r.count end end
  return n
end

local function has_frame(r, name)
  for i = 2, #r.stack do if r.stack[i] == name then return true end end
  return false
end

-- Every line of a folded profile is "frames COUNT".
local function well_formed(text)
  for line in text:gmatch("[^\n]+") do
    if not line:match("^[^ ].* %d+$") then return false, line end
  end
  return true
end

-- The BPF objects and perf events a process holds, from its fdinfo.
local function kernel_objects(pid)
  local _, out = t.sh(("grep -H -E '^(prog_id|map_id|link_id):' /proc/%d/fdinfo/* 2>/dev/null"):format(pid))
  local ids = {}
  for kind, id in out:gmatch("(%a+)_id:%s*(%d+)") do ids[#ids + 1] = { kind = kind, id = id } end
  local _, fds = t.sh(("ls -l /proc/%d/fd 2>/dev/null"):format(pid))
  local perf = select(2, fds:gsub("%[perf_event%]", ""))
  local bpf = select(2, fds:gsub("anon_inode:bpf", ""))
  return ids, perf, bpf
end

-- IDs (of the ones given) that the kernel still has, after waiting up to 3 s for the
-- deferred frees that follow a process's exit.
local function still_alive(ids)
  local left
  for _ = 1, 30 do
    left = {}
    for _, o in ipairs(ids) do
      if t.sh(("bpftool %s show id %s >/dev/null 2>&1"):format(o.kind, o.id)) == 0 then
        left[#left + 1] = o.kind .. " " .. o.id
      end
    end
    if #left == 0 then return left end
    sleep(0.1)
  end
  return left
end

-- Starts `lupe record -o OUT ARGS` in the background; returns its pid and a function that
-- waits for its exit status (nil after timeout seconds).
local function start_record(args, out, errfile)
  local pidf, stf = tmp .. "/rec.pid", tmp .. "/rec.status"
  os.remove(pidf) os.remove(stf) os.remove(out)
  os.execute(("sh -c '%s record -o %s %s 2>%s & echo $! >%s; wait $!; echo $? >%s' >/dev/null 2>&1 &")
    :format(t.bin, out, args, errfile, pidf, stf))
  local pid
  for _ = 1, 100 do
    pid = tonumber(slurp(pidf) or "")
    if pid then break end
    sleep(0.05)
  end
  assert(pid, "lupe record did not start")
  local function wait(timeout)
    for _ = 1, timeout * 10 do
      local st = tonumber(slurp(stf) or "")
      if st then return st end
      sleep(0.1)
    end
  end
  return pid, wait
end

-- Waits until pid has attached its perf events (sampling has begun); false on timeout.
local function wait_sampling(pid, timeout)
  for _ = 1, timeout * 20 do
    local _, perf = kernel_objects(pid)
    if perf > 0 then return true end
    sleep(0.05)
  end
  return false
end

local seed = os.time()
math.randomseed(seed)
print(("# random delays from seed %d"):format(seed))

-- One signal at a random moment of sampling: the profile is written, the exit is clean,
-- and every BPF object lupe held is gone once it has exited.
local function signal_case(sig)
  needs_root()
  local hot = io.popen(tmp .. "/alpha_work 60000 >/dev/null 2>&1 & echo $!"):read("*l")
  local out, errf = tmp .. "/sig.folded", tmp .. "/sig.err"
  local pid, wait = start_record("-F 499 -d 60 -p " .. hot, out, errf)
  local ok = wait_sampling(pid, 30)
  local delay = 0.3 + math.random() * 2.5
  sleep(delay)
  local ids, perf, bpf = kernel_objects(pid)
  os.execute(("kill -%s %d"):format(sig, pid))
  local status = wait(30)
  os.execute("kill " .. hot .. " 2>/dev/null")
  local err = slurp(errf) or ""
  check(ok, "lupe record never attached its perf events: %s", err)
  print(("    SIG%s after %.2f s of sampling: exit %s; it held %d perf fds, %d BPF fds (%d ids)")
    :format(sig, delay, tostring(status), perf, bpf, #ids))
  check(status == 0, "SIG%s: exit status %s (want 0): %s", sig, tostring(status), err)
  check(err:match("lupe record: %d+ samples"), "no summary on stderr: %s", err)
  local text = slurp(out) or ""
  local good, bad = well_formed(text)
  check(good, "malformed line in the profile: %s", tostring(bad))
  local rows = t.parse_folded(text)
  check(total(rows, function(r) return has_frame(r, "alpha_spin") end) > 0,
    "no samples of the workload in the flushed profile (%d rows)", #rows)
  check(perf > 0 and #ids > 0, "no perf events or BPF objects seen while it ran")
  local left = still_alive(ids)
  check(#left == 0, "left behind in the kernel after exit: %s", table.concat(left, ", "))
end

t.case("SIGINT at a random moment: profile flushed, exit 0, no BPF object left", function()
  signal_case("INT")
end)

t.case("SIGTERM at a random moment: profile flushed, exit 0, no BPF object left", function()
  signal_case("TERM")
end)

t.case("SIGHUP is treated like SIGINT (lupe record without --watch)", function()
  signal_case("HUP")
end)

t.case("a script that runs again after Ctrl-C: later runs end at once, a second Ctrl-C quits", function()
  -- Offline: no BPF, no root; the flag and the handler are the same as live.
  if not tmp then tmp = t.tmpdir() end
  local script, log, stf = tmp .. "/loop.lua", tmp .. "/loop.log", tmp .. "/loop.status"
  local f = assert(io.open(script, "w"))
  f:write([[
local s = assert(require("lupe").session{ offline = true })
local out = assert(io.open(arg[1], "w"))
out:setvbuf("line")
out:write("ready\n")
local runs = 0
while true do
  s:run{ duration = 30 }
  runs = runs + 1
  if runs == 1 or runs == 1000 then out:write("runs ", runs, "\n") end
end
]])
  f:close()
  os.remove(stf)
  local pid = tonumber(io.popen(("sh -c '%s run %s %s 2>%s.err & echo $!; wait $!; echo $? >%s' &")
    :format(t.bin, script, log, log, stf)):read("*l"))
  local function wait_for(pat)
    for _ = 1, 200 do
      if (slurp(log) or ""):match(pat) then return true end
      sleep(0.05)
    end
  end
  check(wait_for("ready"), "the script did not start: %s", slurp(log .. ".err") or "")
  os.execute("kill -INT " .. pid)
  -- The first run ends; the script keeps calling s:run, each ending at once.
  check(wait_for("runs 1000\n"), "runs after an interrupt did not end at once: %s", slurp(log) or "")
  os.execute("kill -INT " .. pid)
  local st
  for _ = 1, 100 do
    st = tonumber(slurp(stf) or "")
    if st then break end
    sleep(0.05)
  end
  if not st then os.execute("kill -9 " .. pid) end
  local err = slurp(log .. ".err") or ""
  print(("    second SIGINT: exit status %s; stderr: %s"):format(tostring(st), err:gsub("\n", " ")))
  check(st == 130, "a second SIGINT did not quit the looping script (status %s)", tostring(st))
  check(err:match("interrupted again"), "no message on stderr: %s", err)
end)

t.case("a signal during start-up leaves nothing behind", function()
  needs_root()
  local out, errf = tmp .. "/early.folded", tmp .. "/early.err"
  local pid, wait = start_record("-F 99 -d 30", out, errf)
  local delay = 0.05 + math.random() * 0.5
  sleep(delay)
  local ids = kernel_objects(pid)
  os.execute(("kill -INT %d"):format(pid))
  local status = wait(30)
  print(("    SIGINT %.2f s after start: exit %s, %d BPF ids held then")
    :format(delay, tostring(status), #ids))
  check(status ~= nil, "lupe record did not exit within 30 s of SIGINT")
  check(status == 0 or status == 130, "exit status %s: %s", tostring(status), slurp(errf) or "")
  local left = still_alive(ids)
  check(#left == 0, "left behind in the kernel after exit: %s", table.concat(left, ", "))
end)

t.case("the profiled command inherits none of lupe's ambient capabilities", function()
  needs_root()
  local _, has = t.sh("command -v setpriv")
  if has == "" then t.skip("no setpriv (util-linux)") end
  -- lupe run as a service would be (docs/security.md): with ambient capabilities.
  local status, out, err = t.run(("setpriv --inh-caps +bpf,+perfmon --ambient-caps +bpf,+perfmon " ..
    "%s record -F 99 -o /dev/null -- sh -c 'grep -E \"^Cap(Amb|Eff)\" /proc/self/status'")
    :format(t.bin))
  check(status == 0, "exit status %s: %s", tostring(status), err)
  local amb = out:match("CapAmb:%s*(%x+)")
  check(amb, "no CapAmb line from the command: %s", out)
  check(tonumber(amb, 16) == 0, "the command kept ambient capabilities %s", amb)
end)

t.case("the profiled command inherits no BPF or perf descriptors", function()
  needs_root()
  local out, errf = tmp .. "/cmd.folded", tmp .. "/cmd.err"
  local pid, wait = start_record("-F 99 -- sleep 3", out, errf)
  local child
  for _ = 1, 100 do
    local _, c = t.sh(("pgrep -P %d -x sleep"):format(pid))
    child = tonumber(c:match("%d+"))
    if child then break end
    sleep(0.05)
  end
  check(child, "the command did not start: %s", slurp(errf) or "")
  local ids, perf, bpf = kernel_objects(child)
  local _, fds = t.sh(("ls -l /proc/%d/fd"):format(child))
  local status = wait(30)
  check(status == 0, "exit status %s", tostring(status))
  check(#ids == 0 and perf == 0 and bpf == 0,
    "the command holds %d BPF ids, %d perf fds, %d bpf fds:\n%s", #ids, perf, bpf, fds)
end)

-- A process that exits before lupe has read its maps cannot be symbolized afterwards:
-- those frames must come out as [unknown] or unwinding errors, and be counted, never
-- named after something else.
t.case("processes that exit while being synchronized: counted, never misnamed, no crash", function()
  needs_root()
  local out, errf = tmp .. "/storm.folded", tmp .. "/storm.err"
  local pid, wait = start_record("-F 999 -d 6", out, errf)
  wait_sampling(pid, 30)
  -- 300 processes of 4 ms each, two at a time: many exit before lupe reads their maps.
  local rc, text = t.sh(("for i in $(seq 150); do %s/storm_work 4 & %s/storm_work 4; wait; done")
    :format(tmp, tmp))
  check(rc == 0, "storm: %s", text)
  local status = wait(60)
  local err = slurp(errf) or ""
  check(status == 0, "exit status %s: %s", tostring(status), err)
  check(err:match("lupe record: %d+ samples"), "no summary: %s", err)
  local body = slurp(out) or ""
  local good, bad = well_formed(body)
  check(good, "malformed line: %s", tostring(bad))
  local rows = t.parse_folded(body)
  local function storm(r) return r.stack[1] == "storm_work" end
  local mine = total(rows, storm)
  local named = total(rows, function(r) return storm(r) and has_frame(r, "storm_spin") end)
  local unknown = total(rows, function(r) return storm(r) and r.line:match("%[unknown%]") end)
  local wrong = total(rows, function(r)
    return storm(r) and (has_frame(r, "alpha_spin") or has_frame(r, "beta_spin"))
  end)
  local unknown_frames = tonumber(err:match("(%d+) unknown frames"))
  print(("    %d samples of the short-lived processes: %d in storm_spin, %d with unknown frames")
    :format(mine, named, unknown))
  check(mine >= 50, "only %d samples of 300 processes of 4 ms (stderr: %s)", mine, err)
  check(named > 0, "no sample of the short-lived processes was symbolized")
  check(wrong == 0, "%d samples named after another program", wrong)
  check(unknown == 0 or (unknown_frames and unknown_frames > 0),
    "[unknown] frames in the profile but not counted: %s", err)
end)

-- The unwinder's BPF memory full: a 1 MiB budget cannot hold the delta tables of a whole
-- system (libc's alone is ~0.4 M slots). Tables that do not fit are counted (no_room,
-- rejected), their frames are walked by frame pointers (no_table_frames), and sampling goes
-- on: the workload is still seen, nothing is lost for it.
t.case("BPF delta maps full: counted, frames fall back to frame pointers, sampling goes on", function()
  needs_root()
  local lupe = require "lupe"
  local hot = io.popen(tmp .. "/alpha_work 3000 >/dev/null 2>&1 & echo $!"):read("*l")
  local s = assert(lupe.session{ frequency = 199, unwind_budget = 1048576 })
  local p = s:run{ duration = 2 }
  s:close()
  os.execute("kill " .. hot .. " 2>/dev/null")
  local st = p.stats
  print(("    1 MiB budget: %d samples, no_room %d, rejected %d, resident %d; %d frames " ..
    "without a table, %d by frame pointers"):format(st.samples, st.deltas.no_room,
    st.deltas.rejected, st.deltas.files_resident, st.no_table_frames, st.fallback_frames))
  check(st.deltas.no_room + st.deltas.rejected > 0, "nothing was refused for room")
  check(st.no_table_frames > 0, "no frame fell back for a missing table")
  local spins = 0
  for _, e in ipairs(p.entries) do
    if e.pid == tonumber(hot) and e.frames[1] and e.frames[1].name == "alpha_spin" then
      spins = spins + e.count
    end
  end
  check(spins > 0, "the workload was not sampled (%d samples in all)", st.samples)
end)

-- A script's hook that never returns, and one that raises, on a live session: each is cut
-- (hook_timeout) or caught, reported once and counted, and the session goes on sampling.
t.case("hooks that loop forever or raise: cut, counted, the session goes on", function()
  needs_root()
  local lupe = require "lupe"
  local hot = io.popen(tmp .. "/alpha_work 3000 >/dev/null 2>&1 & echo $!"):read("*l")
  local s = assert(lupe.session{ frequency = 199, target = { pids = { tonumber(hot) } },
                                 hook_timeout = 0.2 })
  local calls = 0
  s:on_trace(function() calls = calls + 1 while true do end end)
  s:on_interval(0.5, function() error("broken on purpose") end)
  local p = s:run{ duration = 2 }
  local st = s:stats()
  s:close()
  os.execute("kill " .. hot .. " 2>/dev/null")
  print(("    %d on_trace calls cut, hook errors %d (on_trace %d, on_interval %d), %d samples")
    :format(calls, st.hook_errors, st.hook_errors_by_hook.on_trace or 0,
      st.hook_errors_by_hook.on_interval or 0, st.samples))
  check(calls > 0 and (st.hook_errors_by_hook.on_trace or 0) >= calls,
    "on_trace ran %d times, %s errors counted", calls, tostring(st.hook_errors_by_hook.on_trace))
  check((st.hook_errors_by_hook.on_interval or 0) > 0, "the raising on_interval was not counted")
  -- A failing verdict keeps the trace: nothing sampled is lost to a broken hook.
  local kept = 0
  for _, e in ipairs(p.entries) do kept = kept + e.count end
  check(st.samples > 0 and kept == st.samples, "%d samples, %d kept", st.samples, kept)
end)

t.case("a reused PID gets the new program's mappings, not the old one's", function()
  needs_root()
  local out, errf = tmp .. "/reuse.folded", tmp .. "/reuse.err"
  local pid, wait = start_record("-F 999 -d 12", out, errf)
  wait_sampling(pid, 30)
  -- alpha_work runs 1 s as pid P and exits; then ns_last_pid = P-1 until beta_work gets P.
  local script = ([[
    %s/alpha_work 1000 & p=$!; wait $p
    for i in $(seq 300); do
      echo $((p - 1)) > /proc/sys/kernel/ns_last_pid
      %s/beta_work 1500 & q=$!
      if [ "$q" = "$p" ]; then wait $q; echo "reused $p after $i tries"; exit 0; fi
      kill $q; wait $q 2>/dev/null
    done
    echo "pid $p not reused"]]):format(tmp, tmp)
  local f = assert(io.open(tmp .. "/reuse.sh", "w"))
  f:write(script)
  f:close()
  local _, said = t.sh("sh " .. tmp .. "/reuse.sh")
  os.execute(("kill -INT %d"):format(pid))
  local status = wait(60)
  local err = slurp(errf) or ""
  check(status == 0, "exit status %s: %s", tostring(status), err)
  if not said:match("reused") then t.skip("could not make the kernel reuse a pid: " .. said) end
  print("    " .. said:gsub("%s+$", ""))
  local rows = t.parse_folded(slurp(out) or "")
  local a = total(rows, function(r) return r.stack[1] == "alpha_work" end)
  local a_ok = total(rows, function(r) return r.stack[1] == "alpha_work" and has_frame(r, "alpha_spin") end)
  local b = total(rows, function(r) return r.stack[1] == "beta_work" end)
  local b_ok = total(rows, function(r) return r.stack[1] == "beta_work" and has_frame(r, "beta_spin") end)
  local b_wrong = total(rows, function(r) return r.stack[1] == "beta_work" and has_frame(r, "alpha_spin") end)
  local a_wrong = total(rows, function(r)
    return r.stack[1] == "alpha_work" and has_frame(r, "beta_spin")
  end)
  print(("    alpha_work %d samples (%d alpha_spin, %d beta_spin); " ..
    "beta_work %d (%d beta_spin, %d alpha_spin)")
    :format(a, a_ok, a_wrong, b, b_ok, b_wrong))
  local function top(comm)
    local best
    for _, r in ipairs(rows) do
      if r.stack[1] == comm and (not best or r.count > best.count) then best = r end
    end
    return best and best.line:sub(1, 200) or "none"
  end
  check(a >= 100 and b >= 100, "too few samples: alpha %d, beta %d", a, b)
  check(b_wrong == 0 and a_wrong == 0,
    "samples named after the other program: %d of the new, %d of the old", b_wrong, a_wrong)
  check(b_ok / b >= 0.9 and a_ok / a >= 0.9, "symbolized: alpha %d/%d, beta %d/%d; top stacks:\n%s\n%s",
    a_ok, a, b_ok, b, top("alpha_work"), top("beta_work"))
end)

local rc = t.run_all()
if tmp then os.execute("rm -rf " .. tmp) end
return rc
