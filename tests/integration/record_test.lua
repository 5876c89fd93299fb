-- lupe record end to end: real BPF sampling of real processes, folded output checked
-- against functions we know are hot. Needs root; SKIPs (visibly) without it.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check

local tmp, built

local function build()
  if built ~= nil then return built end
  tmp = t.tmpdir()
  local src = t.fixtures .. "/src"
  local cmds = {
    ("clang -O2 -g -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -pthread -o %s/hot %s/hot.c")
      :format(tmp, src),
    ("clang++ -O2 -g -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -o %s/hotpp %s/hot.cpp")
      :format(tmp, src),
  }
  t.build(cmds)
  built = true
  return built
end

local function needs_root()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  build()
end

-- lupe record ARGS into a folded file; returns rows, status, stderr.
local function record(args)
  return t.record(tmp .. "/out.folded", args)
end

local function total(rows, pred)
  local n = 0
  for _, r in ipairs(rows) do if not pred or pred(r) then n = n + r.count end end
  return n
end

local function has_seq(stack, seq)
  -- seq appears in order (root to leaf), not necessarily adjacent.
  local i = 1
  for _, f in ipairs(stack) do
    if f == seq[i] then i = i + 1 if i > #seq then return true end end
  end
  return false
end

t.case("a command's hot function gets >= 90% of its samples, with its callers", function()
  needs_root()
  local rows, status, err = record("-F 999 -- " .. tmp .. "/hot 1500")
  check(status == 0, "record exited %s: %s", status, err)
  local mine = total(rows, function(r) return r.stack[1] == "hot" end)
  check(mine >= 500, "only %d samples of hot (stderr: %s)", mine, err)
  local good = total(rows, function(r)
    return r.stack[1] == "hot" and r.stack[#r.stack] == "hot_inner" and
      has_seq(r.stack, { "main", "worker", "middle", "hot_inner" })
  end)
  check(good / mine >= 0.9, "%d of %d samples in main;worker;middle;hot_inner", good, mine)
  check(err:match("samples %(0 lost"), "lost samples or no summary: %s", err)
end)

t.case("exits with the command's exit status", function()
  needs_root()
  local _, status = record("-- sh -c 'exit 7'")
  check(status == 7, "status %s", status)
  local _, status2, err = record("-- /nonexistent/cmd")
  check(status2 == 127, "status %s", status2)
  check(err:match("cannot run '/nonexistent/cmd'"), "stderr: %s", err)
end)

t.case("two threads: each hot function under its own thread function", function()
  needs_root()
  local rows = record("-F 999 -- " .. tmp .. "/hot 1200 two")
  local a = total(rows, function(r) return has_seq(r.stack, { "alpha_loop", "alpha_hot" }) end)
  local b = total(rows, function(r) return has_seq(r.stack, { "beta_loop", "beta_hot" }) end)
  local all = total(rows, function(r) return r.stack[1] == "hot" end)
  check(a > 200 and b > 200, "alpha %d, beta %d of %d", a, b, all)
  check((a + b) / all >= 0.9, "alpha+beta %d of %d", a + b, all)
end)

t.case("a process that execs another program: both images symbolized", function()
  needs_root()
  local rows = record(("-F 999 -- %s/hot 600 exec %s/hotpp 600"):format(tmp, tmp))
  local before = total(rows, function(r) return has_seq(r.stack, { "worker", "middle", "hot_inner" }) end)
  local after = total(rows, function(r) return r.stack[#r.stack] == "lupe::Spinner::spin(unsigned long)" end)
  check(before > 200, "pre-exec samples: %d", before)
  check(after > 200, "post-exec samples: %d (C++ names demangled?)", after)
end)

t.case("a program living 30 ms, run 50 times: its samples are symbolized", function()
  needs_root()
  local rows = record(("-F 999 -- sh -c 'for i in $(seq 50); do %s/hot 30; done'"):format(tmp))
  -- Each run also spends a few ms in exec and ld.so (with no frame pointers there, FP
  -- stacks of that phase have unresolvable frames): judge the leaf, which is the sampled
  -- instruction itself, and the share of the hot loop.
  local mine = total(rows, function(r) return r.stack[1] == "hot" end)
  local named = total(rows, function(r)
    local leaf = r.stack[#r.stack]
    return r.stack[1] == "hot" and leaf ~= "[unknown]" and not leaf:match("%+0x%x+$")
  end)
  local inner = total(rows, function(r) return r.stack[1] == "hot" and r.stack[#r.stack] == "hot_inner" end)
  check(mine >= 500, "only %d samples of hot", mine)
  check(named / mine >= 0.9, "%d of %d samples have a symbolized leaf", named, mine)
  check(inner / mine >= 0.75, "%d of %d samples in hot_inner", inner, mine)
end)

t.case("-p profiles only the given process, -d is honoured within 10%", function()
  needs_root()
  local p = io.popen(tmp .. "/hot 6000 >/dev/null 2>&1 & echo $!")
  local pid = p:read("*l")
  p:close()
  local rows, status, err = record("-F 499 -d 1.5 -p " .. pid)
  -- The sampling window as the profile reports it (BPF start-up comes before it and
  -- varies with the machine's load, so the wall time is checked loosely).
  local t0 = io.popen("date +%s.%N"):read("*l")
  local tstatus, top = t.run(("%s record -F 99 -d 1.5 -p %s -f top"):format(t.bin, pid))
  local t1 = io.popen("date +%s.%N"):read("*l")
  os.execute("kill " .. pid .. " 2>/dev/null")
  check(status == 0 and tstatus == 0, "status %s/%s: %s", status, tstatus, err)
  local window = tonumber(top:match("samples in ([%d.]+) s"))
  check(window and math.abs(window - 1.5) <= 0.15, "sampled for %s s with -d 1.5", tostring(window))
  local elapsed = tonumber(t1) - tonumber(t0)
  check(elapsed >= 1.5 and elapsed < 3, "took %.2f s for -d 1.5", elapsed)
  local others = total(rows, function(r) return r.stack[1] ~= "hot" end)
  check(others == 0, "%d samples of other processes", others)
  check(total(rows) > 300, "only %d samples", total(rows))
end)

t.case("whole-system mode sees several processes", function()
  needs_root()
  local p = io.popen(tmp .. "/hot 3000 >/dev/null 2>&1 & echo $!")
  local pid = p:read("*l")
  p:close()
  local rows, status = record("-F 199 -d 1")
  os.execute("kill " .. pid .. " 2>/dev/null")
  check(status == 0, "status %s", status)
  local comms = {}
  for _, r in ipairs(rows) do comms[r.stack[1]] = true end
  local n = 0
  for _ in pairs(comms) do n = n + 1 end
  check(comms.hot, "the busy process was not sampled")
  check(n >= 2, "only %d comms", n)
end)

t.case("Ctrl-C stops sampling, flushes the profile and exits 0", function()
  needs_root()
  local out = tmp .. "/int.folded"
  local status, text = t.sh(("%s record -F 199 -o %s & pid=$!; sleep 1.5; kill -INT $pid; wait $pid")
    :format(t.bin, out))
  check(status == 0, "status %s: %s", status, text)
  check(text:match("lupe record: %d+ samples"), "no summary: %s", text)
  local f = io.open(out)
  local body = f and f:read("*a") or ""
  if f then f:close() end
  check(#t.parse_folded(body) > 0, "empty profile after SIGINT")
end)

t.case("rejects bad options with a clear error", function()
  local status, _, err = t.run(t.bin .. " record -F abc")
  check(status == 2 and err:match("%-F: expected a number"), "status %s: %s", status, err)
  status, _, err = t.run(t.bin .. " record --bogus")
  check(status == 2 and err:match("unknown option '%-%-bogus'"), "status %s: %s", status, err)
  status, _, err = t.run(t.bin .. " record -f nope -d 1")
  check(status == 2 and err:match("unknown format 'nope'"), "status %s: %s", status, err)
  local rc, out = t.sh(t.bin .. " record --help")
  check(rc == 0 and out:match("usage: lupe record"), "help: %s", out)
end)

local rc = t.run_all()
if tmp then os.execute("rm -rf " .. tmp) end
return rc
