-- The script commands' command line (lupe.args): bad numbers, missing pids, kept output
-- files, exit statuses, -p runs that end with their processes. Each case is a repro from a
-- first-time user's review; option errors need no root, sampling cases SKIP without it.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check
local L = t.bin

local function needs_root()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
end

local slurp = t.slurp

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- A pid that no process has: above pid_max, or one that has exited and been reaped.
local function missing_pid()
  local max = tonumber(slurp("/proc/sys/kernel/pid_max") or "")
  if max and max < 4194304 then return max + 1 end
  local _, out = t.sh("sh -c 'echo $$'")
  return tonumber(out:match("%d+"))
end

-- A busy process for -p (ends by itself after secs seconds); returns its pid.
local function busy(secs)
  local _, out = t.sh(("timeout %s sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!")
    :format(secs))
  return assert(tonumber(out:match("%d+")), out)
end

local function files_in(d)
  local p = io.popen("ls -A " .. d)
  local list = {}
  for l in p:lines() do list[#list + 1] = l end
  p:close()
  return list
end

t.case("top -n -1 is a usage error, not an endless loop", function()
  -- Before: ranked() cut `while #list > n` (never true for n = -1) with no hook guard.
  -- -k: the old top ignored SIGTERM too.
  local pid = busy(10)
  local status, _, err = t.run("timeout -k 1 8 " .. L .. " top -d 2 -n -1 -p " .. pid)
  os.execute("kill " .. pid .. " 2>/dev/null")
  check(status == 2, "status %d (124: it hung): %s", status, err)
  check(err:match("^lupe top: %-n: expected an integer >= 1, got '%-1'"), "stderr: %s", err)
end)

t.case("every script rejects bad numbers and values with one line, exit 2", function()
  local cases = {
    { "flamegraph -F 0 -d 1", "^lupe flamegraph: %-F: expected a number >= 1, got '0'\n$" },
    { "flamegraph -F -5 -d 1", "^lupe flamegraph: %-F: expected a number >= 1, got '%-5'\n$" },
    { "top -d -1", "^lupe top: %-d: expected a number >= 0.001, got '%-1'\n$" },
    { "top --filter -d 1", "^lupe top: option %-%-filter needs a value\n$" },
    { "per-process -n -1", "^lupe per%-process: %-n: expected an integer >= 1, got '%-1'\n$" },
    { "per-process --depth=x", "^lupe per%-process: %-%-depth: expected an integer >= 1" },
    { "policy-example --every 0", "^lupe policy%-example: %-%-every: expected a number" },
    { "policy-example --fast -1", "^lupe policy%-example: %-%-fast: expected a number >= 1" },
    { "record -d -1", "^lupe record: %-d: expected a number >= 0.001, got '%-1'\n$" },
    { "record -F 1000000 -- true", "^lupe record: %-F: 1000000 Hz is above the kernel's " ..
      "limit of %d+ Hz %(/proc/sys/kernel/perf_event_max_sample_rate%)\n$" },
    { "record -p 12,x", "^lupe record: %-p: not a pid: 'x'\n$" },
    { "top --bogus", "^lupe top: unknown option '%-%-bogus' %(see lupe top %-%-help%)\n$" },
  }
  for _, c in ipairs(cases) do
    local status, out, err = t.run(L .. " " .. c[1])
    check(status == 2, "%s: status %d, stderr %q", c[1], status, err)
    check(out == "", "%s: stdout %q", c[1], out)
    check(err:match(c[2]), "%s: stderr %q", c[1], err)
  end
  -- --help still answers on a line with errors, and --opt=value is an option.
  local status, out = t.run(L .. " top -n -1 --help")
  check(status == 0 and out:match("^usage: lupe top"), "status %d: %q", status, out)
end)

t.case("a session refuses a frequency of 0 or below (0 was read as the default)", function()
  local lupe = require "lupe"
  for _, hz in ipairs({ 0, -1, -5 }) do
    local ok, err = pcall(lupe.session, { frequency = hz, offline = true })
    check(not ok and tostring(err):match("frequency: expected a frequency in Hz >= 1"),
      "frequency %d: %s %s", hz, tostring(ok), tostring(err))
  end
end)

t.case("a -p pid that does not exist is an error, in every command", function()
  local pid = missing_pid()
  for _, cmd in ipairs({ "record -d 1 -p %d", "top -d 1 -p %d", "flamegraph -d 1 -o /dev/null -p %d",
                         "per-process -d 1 -p %d", "repl -p %d </dev/null" }) do
    local c = cmd:format(pid)
    local status, _, err = t.run("timeout -k 1 8 " .. L .. " " .. c)
    check(status == 2, "%s: status %d, stderr %q", c, status, err)
    check(err:match("no such process: " .. pid), "%s: stderr %q", c, err)
  end
end)

t.case("a failed start leaves an earlier profile as it was, and no temporary file", function()
  local tmp = t.tmpdir()
  write(tmp .. "/a.folded", "x\n")
  local status, _, err = t.run(("%s record -o %s/a.folded -G /nonexistent -d 1"):format(L, tmp))
  check(status == 1, "status %d: %s", status, err)
  check(slurp(tmp .. "/a.folded") == "x\n", "a.folded is now %q", slurp(tmp .. "/a.folded"))
  write(tmp .. "/a.svg", "x\n")
  status, _, err = t.run(("%s flamegraph -o %s/a.svg -p %d"):format(L, tmp, missing_pid()))
  check(status == 2, "status %d: %s", status, err)
  check(slurp(tmp .. "/a.svg") == "x\n", "a.svg is now %q", slurp(tmp .. "/a.svg"))
  local list = files_in(tmp)
  check(#list == 2, "files left: %s", table.concat(list, " "))
  status, _, err = t.run(("%s record -o %s/no/such/dir/a.folded -d 1"):format(L, tmp))
  check(status == 2 and err:match("cannot write the profile: .*no/such/dir/a.folded"),
    "status %d: %s", status, err)
  os.execute("rm -rf " .. tmp)
end)

t.case("record -- COMMAND: 2 for bad options, 1 for a failed start, 127 for a missing command", function()
  local tmp = t.tmpdir()
  local status, _, err = t.run(L .. " record -F 1000000 -- true")
  check(status == 2, "-F too high: status %d: %s", status, err)
  -- A raw file that cannot be written fails the start (with or without root).
  status, _, err = t.run(("%s record --raw %s/no/dir/r.raw -o %s/o.folded -- true"):format(L, tmp, tmp))
  check(status == 1, "bad --raw: status %d: %s", status, err)
  if t.is_root() then
    status, _, err = t.run(L .. " record -o /dev/null -- /nonexistent/cmd")
    check(status == 127 and err:match("cannot run '/nonexistent/cmd'"), "status %d: %s", status, err)
  end
  os.execute("rm -rf " .. tmp)
end)

t.case("top, flamegraph and per-process -p end when the processes exit", function()
  needs_root()
  local tmp = t.tmpdir()
  for _, cmd in ipairs({ "top -d 30 -p %d", "flamegraph -d 30 -o " .. tmp .. "/f.svg -p %d",
                         "per-process -d 30 -p %d" }) do
    local c = cmd:format(busy(1.5))
    -- The guard is generous (the process ends after 1.5 s): 124 means lupe did not stop.
    local status, _, err = t.run("timeout -k 1 15 " .. L .. " " .. c)
    check(status == 0, "%s: status %d (124: it ran on), stderr %q", c, status, err)
  end
  os.execute("rm -rf " .. tmp)
end)

t.case("record -- COMMAND interrupted exits 128 + the signal", function()
  needs_root()
  local tmp = t.tmpdir()
  for _, sig in ipairs({ { "INT", 130 }, { "TERM", 143 } }) do
    local status, text = t.sh(("%s record -o %s/i.folded -- sleep 10 & pid=$!; sleep 1; " ..
      "kill -%s $pid; wait $pid"):format(L, tmp, sig[1]))
    check(status == sig[2], "SIG%s: status %d, not %d: %s", sig[1], status, sig[2], text)
    check(slurp(tmp .. "/i.folded"), "SIG%s: no profile written", sig[1])
  end
  os.execute("rm -rf " .. tmp)
end)

t.case("record -o picks the format from the extension", function()
  needs_root()
  local tmp = t.tmpdir()
  local cmd = "-- sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'"
  local want = { ["o.svg"] = "^<%?xml", ["o.jsonl"] = '^{"format":"lupe%-json"',
                 ["o.speedscope.json"] = '^{"$schema":"https://www.speedscope',
                 ["o.pb.gz"] = "^\31\139", ["o.txt"] = "^[^<{]" }
  for name, pat in pairs(want) do
    local status, _, err = t.run(("%s record -F 999 -o %s/%s %s"):format(L, tmp, name, cmd))
    local body = slurp(tmp .. "/" .. name) or ""
    check(status == 0, "%s: status %d: %s", name, status, err)
    check(body:match(pat), "%s starts %q", name, body:sub(1, 40))
  end
  os.execute("rm -rf " .. tmp)
end)

t.case("the top format heads its process table 'share' and lists every count", function()
  needs_root()
  local status, out, err = t.run(L .. " record -F 999 -f top -- sh -c " ..
    "'i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done'")
  check(status == 0, "status %d: %s", status, err)
  for _, name in ipairs({ "user_stack_err=", "kernel_stack_err=", "events_lost=",
                          "bpf_bad_records=", "symbolize_errors=" }) do
    check(out:find(name, 1, true), "no %s in %q", name, out:match("^[^\n]*"))
  end
  check(out:match("\n  share  process %(pid%)\n"), "heading: %s", out)
  check(not out:match("samples  process"), "old heading: %s", out)
end)

t.case("repl freq(-1) says what is wrong, without a traceback", function()
  needs_root()
  local _, out = t.sh("printf 'freq(-1)\\n' | timeout -k 1 10 " .. L .. " repl")
  check(out:match("error: freq: expected a frequency in Hz >= 1, got %-1"), "%q", out)
  check(not out:match("stack traceback"), "%q", out)
end)

t.case("run --watch on a missing script says it cannot be opened", function()
  local status, _, err = t.run(L .. " run --watch /nonexistent/s.lua")
  check(status == 1, "status %d", status)
  check(err:match("cannot open script '?/nonexistent/s.lua'?: No such file or directory"), "%q", err)
  check(not err:match("refusing"), "%q", err)
end)

t.case("help texts: --version, JSON Lines, exit statuses, shared options", function()
  local _, out = t.run(L .. " --help")
  check(out:match("%-%-version"), "lupe --help: %s", out)
  _, out = t.run(L .. " record --help")
  check(out:match("JSON Lines"), "record --help does not say JSON Lines")
  check(out:match("130 for Ctrl%-C"), "record --help does not give the exit status")
  check(out:match("lupe top and lupe flamegraph take the same"), "no shared flags")
end)

t.case("a replay of a cut recording writes what it holds, says so and exits 3", function()
  local fixture = slurp(t.fixtures .. "/replay/hot.raw")
  check(fixture, "no fixture recording")
  local tmp = t.tmpdir()
  write(tmp .. "/cut.raw", fixture:sub(1, #fixture - 100))
  local status, _, err = t.run(("LUPE_REPLAY=%s/cut.raw %s record -o %s/out.folded")
    :format(tmp, L, tmp))
  local out = slurp(tmp .. "/out.folded") or ""
  os.execute("rm -rf " .. tmp)
  check(status == 3, "exit status %s, want 3: %s", tostring(status), err)
  check(err:match("cut short or damaged %(1 errors%)"), "no summary of the damage: %s", err)
  check(out:match("^hot;[^\n]* %d+\n"), "the samples before the cut were not written: %q",
    out:sub(1, 200))
end)

os.exit(t.run_all())
