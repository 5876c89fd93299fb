-- Record and replay: a real workload recorded live (lupe record --raw, and a script with
-- raw = FILE), then replayed by the same script as an unprivileged user (LUPE_REPLAY, and
-- lupe run --replay FILE SCRIPT).
-- Every output must equal the live one byte for byte. Needs root; SKIPs without it.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check

local tmp, built

local function setup()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  local rc = t.sh("command -v setpriv")
  if rc ~= 0 then t.skip("setpriv (util-linux) is missing: cannot replay as another user") end
  if built then return end
  tmp = t.tmpdir()
  t.build{
    ("clang -O2 -g -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -pthread -o %s/hot %s/src/hot.c")
      :format(tmp, t.fixtures),
    -- The unprivileged replay reads the recording and writes its outputs here.
    "chmod 777 " .. tmp,
  }
  built = true
end

local slurp = t.slurp

-- A workload with user and kernel stacks, several processes (exec, fork, exit events) and
-- an exit status of its own.
local function workload()
  return ("sh -c '%s/hot 700 & dd if=/dev/zero of=/dev/null bs=4k count=150000 2>/dev/null; " ..
          "wait; exit 3'"):format(tmp)
end

-- Unprivileged: as nobody when nobody can reach the build; a checkout under a 0700
-- directory (what mktemp -d makes) is out of its reach, and then as root without any
-- capability, which can load no BPF program either. Either way no privilege is left.
local prefix
local function unprivileged(cmd)
  if not prefix then
    local nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups "
    if t.run(nobody .. t.bin .. " record --help >/dev/null") == 0 then
      prefix = nobody
    else
      prefix = "setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all "
      print("    nobody cannot reach " .. t.bin .. ": replaying as root without capabilities")
    end
  end
  return prefix .. cmd
end

-- The first line where a and b differ, for the failure message.
local function first_diff(a, b)
  local i = 1
  local la, lb = a:gmatch("[^\n]*"), b:gmatch("[^\n]*")
  while true do
    local x, y = la(), lb()
    if x ~= y then return ("line %d:\n  live   %s\n  replay %s"):format(i, tostring(x), tostring(y)) end
    if x == nil then return "equal" end
    i = i + 1
  end
end

t.case("lupe record --raw: the replay writes the same folded profile and exit status", function()
  setup()
  local raw, live, replay = tmp .. "/rec.raw", tmp .. "/live.folded", tmp .. "/replay.folded"
  local status, _, err = t.run(("%s record -F 499 --raw %s -o %s -- %s"):format(t.bin, raw, live,
                                                                                  workload()))
  check(status == 3, "record exited %s (want the command's 3): %s", status, err)
  check(err:match("raw recording: %d+ bytes"), "no raw recording summary: %s", err)
  t.sh("chmod 644 " .. raw)
  local rstatus, _, rerr = t.run(unprivileged(("env LUPE_REPLAY=%s %s record -o %s"):format(
    raw, t.bin, replay)))
  check(rstatus == 3, "replay exited %s (want the recorded 3): %s", rstatus, rerr)
  local a, b = slurp(live), slurp(replay)
  check(a and #a > 0, "empty live profile: %s", err)
  local rows = t.parse_folded(a)
  local kernel, hot = 0, 0
  for _, r in ipairs(rows) do
    if r.line:match("_%[k%]") then kernel = kernel + r.count end
    if r.line:match("hot_inner") then hot = hot + r.count end
  end
  check(kernel > 0 and hot > 0, "the workload left %d kernel and %d hot_inner samples", kernel, hot)
  check(a == b, "replayed folded differs from live at %s", first_diff(a, b or ""))
  -- The summary on stderr (counts from BPF, user-space counts) matches too, but for the
  -- process manager's own figures ("processes tracked": a replay reads no /proc).
  local function summary(s)
    local counts, stacks = s:match("lupe record: (%d+ samples.-unknown frames); .-(%d+ unique stacks)")
    return counts and (counts .. stacks)
  end
  check(summary(err) and summary(err) == summary(rerr), "summaries differ:\n%s\n%s", err, rerr)
end)

-- The same script live and replayed: on_interval batches at the same drains, and every
-- output format. Its few max_entries make polls fold the entries of exited processes (one
-- dd after another), which the replay must do alike; every second interval it exports
-- the profile so far and forgets it (s:reset()), which the replay must follow too.
local SCRIPT = [=[
local lupe = require "lupe"
local output = require "lupe.output"
local outdir, raw, cmd = arg[1], arg[2], arg[3]
local s = assert(lupe.session{ frequency = 499, target = { command = { "sh", "-c", cmd } },
                               raw = raw ~= "-" and raw or nil, max_entries = 8 })
local log = assert(io.open(outdir .. "/intervals", "w"))
local exports = assert(io.open(outdir .. "/exports", "w"))
local k = 0
s:on_interval(0.25, function(batch)
  local n = 0
  for i = 1, #batch do n = n + batch:count(i) end
  log:write(("%d entries %d samples\n"):format(#batch, n))
  k = k + 1
  if k % 2 == 0 then
    exports:write(("-- export %d\n"):format(k))
    output.get("folded").write(s:profile(), exports)
    s:reset()
  end
end)
local p = s:run{}
log:write(("folded %d entries in %d folds\n"):format(p.stats.folded_entries, p.stats.folds))
log:close()
exports:close()
for _, fmt in ipairs{ "folded", "json", "top", "speedscope", "svg", "pprof" } do
  local f = assert(io.open(outdir .. "/out." .. fmt, "wb"))
  assert(output.get(fmt)).write(p, f, { top = 40 })
  f:close()
end
return p.exit_status
]=]

t.case("a script replayed: same on_interval batches and every output format", function()
  setup()
  -- Its own directory, writable by root alone: lupe refuses, as root, a script that others
  -- could have changed (tmp is open to the unprivileged replay).
  t.sh(("mkdir -m 755 -p %s/scripts"):format(tmp))
  local script = tmp .. "/scripts/replay_script.lua"
  local f = assert(io.open(script, "w"))
  f:write(SCRIPT)
  f:close()
  local raw = tmp .. "/script.raw"
  t.sh(("mkdir -p %s/live %s/replay && chmod 777 %s/replay"):format(tmp, tmp, tmp))
  local cmd = ("%s/hot 700 & for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero of=/dev/null " ..
               "bs=4k count=20000 2>/dev/null; done; wait; exit 3"):format(tmp)
  local status, _, err = t.run(("%s run %s %s/live %s %q"):format(t.bin, script, tmp, raw, cmd))
  check(status == 3, "live script exited %s: %s", status, err)
  t.sh("chmod 644 " .. raw)
  -- The documented form: lupe run --replay FILE SCRIPT (the record case uses LUPE_REPLAY).
  local rstatus, _, rerr = t.run(unprivileged(("%s run --replay %s %s %s/replay - %q"):format(
    t.bin, raw, script, tmp, cmd)))
  check(rstatus == 3, "replayed script exited %s: %s", rstatus, rerr)
  local intervals = slurp(tmp .. "/live/intervals")
  check(intervals and select(2, intervals:gsub("\n", "")) >= 3, "fewer than 2 intervals: %s",
        tostring(intervals))
  check(intervals:match("folded [1-9]%d* entries"), "nothing folded: %s", intervals)
  check(slurp(tmp .. "/live/exports"):match("%-%- export 2\n[^\n]+ %d+\n"),
        "no export before a reset: %s", slurp(tmp .. "/live/exports"))
  for _, name in ipairs{ "intervals", "exports", "out.folded", "out.json", "out.top", "out.speedscope",
                         "out.svg", "out.pprof" } do
    local a, b = slurp(tmp .. "/live/" .. name), slurp(tmp .. "/replay/" .. name)
    check(a and #a > 0, "live %s is empty", name)
    check(a == b, "%s: replay differs from live at %s", name, first_diff(a, b or ""))
  end
end)

t.case("a damaged recording replays up to the damage and says where", function()
  setup()
  local raw = tmp .. "/rec.raw"
  local data = slurp(raw)
  if not data then t.skip("no recording from the first case") end
  local cut = tmp .. "/cut.raw"
  local f = assert(io.open(cut, "wb"))
  f:write(data:sub(1, math.floor(#data / 2)))
  f:close()
  t.sh("chmod 644 " .. cut)
  local status, _, err = t.run(unprivileged(("env LUPE_REPLAY=%s %s record -o %s/cut.folded"):format(
    cut, t.bin, tmp)))
  check(status == 0 or status == 3, "replay of a cut file exited %s: %s", status, err)
  check(err:match("offset %d+"), "no offset in the error: %s", err)
  local g = assert(io.open(tmp .. "/bad.raw", "wb"))
  g:write("LUPE-RAW\2\0\0\0" .. ("\0"):rep(200))
  g:close()
  status, _, err = t.run(("env LUPE_REPLAY=%s/bad.raw %s record -o %s/bad.folded"):format(
    tmp, t.bin, tmp))
  check(status ~= 0, "a newer major version was accepted")
  check(err:match("version 2%.0 is not supported"), "unclear error: %s", err)
end)

os.exit(t.run_all())
