-- `lupe run --watch`: a live run whose script is rewritten (v1 -> v2), broken (v3: the
-- error is printed, v2 keeps running), rewritten again (v4) and reloaded by SIGHUP, on one
-- session whose sample count never goes back. Needs root; SKIPs without it.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check
local now = require("lupe.session").now

local function write(path, text)
  -- Written beside and renamed over, as editors do: the watcher never sees half a file.
  local f = assert(io.open(path .. ".tmp", "w"))
  f:write(text)
  f:close()
  assert(os.rename(path .. ".tmp", path))
end

local function slurp(path) return t.slurp(path) or "" end

local function sleep(s) os.execute(("sleep %.3f"):format(s)) end

-- Waits (at most limit seconds) until pred(stdout, stderr) is true; returns its result.
local function wait_for(out, err, limit, pred)
  local deadline = now() + limit
  repeat
    local r = pred(slurp(out), slurp(err))
    if r then return r end
    sleep(0.02)
  until now() > deadline
  return nil
end

-- Every "<tag> <ktime> <samples>" line the scripts print, in order.
local function lines(text)
  local rows = {}
  for tag, kt, n in text:gmatch("(v%d%w*) ([%d%.]+) (%d+)\n") do
    rows[#rows + 1] = { tag = tag, kt = tonumber(kt), n = tonumber(n) }
  end
  return rows
end

-- A CPU-bound shell loop to sample: with one target the run loop polls every 10 ms,
-- whereas the whole system can keep a drain busy for a second (new binaries to read), which
-- would be measured instead of the reload.
local busy

-- A script version: prints its tag, the time and the session's sample count per interval.
local function script(tag, extra)
  return ([[
local lupe = require "lupe"
local now = require("lupe.session").now
local s = assert(lupe.session{ frequency = 199, target = { pids = { %d } } })
%s
print(("%s-loaded %%.6f 0"):format(now()))
s:on_interval(0.05, function()
  print(("%s %%.6f %%d"):format(now(), s:stats().samples))
  io.stdout:flush()
end)
local p = s:run{ duration = 60 }
print(("end-%s %%.6f %%d"):format(now(), p.stats.samples))
return 0
]]):format(busy, extra or "", tag, tag, tag)
end

t.case("a rewritten script takes over the live session; a broken one keeps the old", function()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  local tmp = t.tmpdir()
  local path, out, err = tmp .. "/w.lua", tmp .. "/out", tmp .. "/err"
  local bp = io.popen("sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!")
  busy = tonumber(bp:read("*l"))
  bp:close()
  write(path, script("v1"))
  local p = io.popen(("%s run --watch %s >%s 2>%s & echo $!"):format(t.bin, path, out, err))
  local pid = tonumber(p:read("*l"))
  p:close()
  local ok, res = pcall(function()
    check(wait_for(out, err, 15, function(o) return select(2, o:gsub("\nv1 ", "")) >= 3 end),
      "v1 never printed three intervals: %s", slurp(err))

    -- v2 by a file change.
    local t_write = now()
    write(path, script("v2"))
    check(wait_for(out, err, 5, function(o) return o:match("\nv2 ") end),
      "v2 never ran: %s", slurp(err))
    local rows = lines(slurp(out))
    local last_v1, first_v2
    for _, r in ipairs(rows) do
      if r.tag == "v1" then last_v1 = r end
      if r.tag == "v2" and not first_v2 then first_v2 = r end
    end
    local loaded = tonumber(slurp(out):match("v2%-loaded ([%d%.]+)"))
    print(("    reload: file written -> v2 loaded %.1f ms, -> v2's first hook %.1f ms"):format(
      (loaded - t_write) * 1000, (first_v2.kt - t_write) * 1000))
    check(first_v2.n >= last_v1.n, "the sample count went back: v1 %d, then v2 %d",
      last_v1.n, first_v2.n)

    -- v3 does not load: the error is printed and v2 goes on.
    write(path, "local x = = 1\n")
    check(wait_for(out, err, 5, function(_, e) return e:match("reload %(file changed%) failed") end),
      "no reload error printed: %s", slurp(err))
    local n_before = #lines(slurp(out))
    check(wait_for(out, err, 5, function(o) return #lines(o) >= n_before + 3 end),
      "v2 stopped after the broken reload")
    check(slurp(err):match("w%.lua:1:"), "the error does not name the line: %s", slurp(err))
    for _, r in ipairs(lines(slurp(out))) do
      check(r.tag ~= "v3", "the broken script ran")
    end

    -- v4 reads a side file at load time: SIGHUP (not a change of w.lua) reloads it.
    local gen = tmp .. "/gen"
    local f = assert(io.open(gen, "w")) f:write("a\n") f:close()
    write(path, script("v4a", ("local g = io.open(%q):read('*l') if g == 'b' then " ..
      "print(('v4b-loaded %%.6f 0'):format(now())) end"):format(gen)))
    check(wait_for(out, err, 5, function(o) return o:match("\nv4a ") end), "v4 never ran")
    f = assert(io.open(gen, "w")) f:write("b\n") f:close()
    os.execute("kill -HUP " .. pid)
    check(wait_for(out, err, 5, function(o) return o:match("v4b%-loaded") end),
      "SIGHUP did not reload: %s", slurp(err))
    check(slurp(err):match("reloaded %(SIGHUP%)"), "no SIGHUP reload reported")

    -- The counts never went back across all four versions.
    local prev = 0
    for _, r in ipairs(lines(slurp(out))) do
      check(r.n >= prev, "%s: samples %d after %d", r.tag, r.n, prev)
      prev = r.n
    end

    -- Ctrl-C ends the run: the newest script resumes after its s:run and exits 0.
    os.execute("kill -INT " .. pid)
    check(wait_for(out, err, 10, function(o) return o:match("end%-v4a [%d%.]+ (%d+)") end),
      "the newest script did not finish: %s", slurp(err))
    local final = tonumber(slurp(out):match("end%-v4a [%d%.]+ (%d+)"))
    check(final >= prev, "final count %d < %d", final, prev)
  end)
  os.execute("kill " .. pid .. " " .. busy .. " 2>/dev/null")
  if not ok then error(res, 0) end
  os.execute("rm -rf " .. tmp)
end)

t.case("a script that fails on its first load exits 1 with the error", function()
  local tmp = t.tmpdir()
  local path = tmp .. "/bad.lua"
  write(path, "error('first load fails')\n")
  local status, out, err = t.run(t.bin .. " run --watch " .. path)
  os.execute("rm -rf " .. tmp)
  check(status == 1, "status %d", status)
  check(out == "", "printed %q", out)
  check(err:match("first load fails"), "stderr: %s", err)
end)

t.case("without a session, --watch runs the script and returns its status", function()
  local tmp = t.tmpdir()
  local path = tmp .. "/plain.lua"
  write(path, "local o = require 'lupe.run_options' print(o.watch, o.replay, ...) return 4\n")
  local status, out = t.run(t.bin .. " run --watch " .. path .. " x y")
  os.execute("rm -rf " .. tmp)
  check(status == 4, "status %d", status)
  check(out == "true\tnil\tx\ty\n", "printed %q", out)
end)

os.exit(t.run_all())
