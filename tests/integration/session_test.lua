-- The Lua session surface on real BPF: filters (pushed into BPF where they can be), live
-- frequency changes, pause and resume. Needs root; SKIPs (visibly) without it.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check
local lupe = require "lupe"

local tmp

local function hot()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  if not tmp then
    tmp = t.tmpdir()
    local rc, out = t.sh(("clang -O2 -g -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer " ..
      "-pthread -o %s/hot %s/src/hot.c"):format(tmp, t.fixtures))
    if rc ~= 0 then error("fixture build failed: " .. out) end
  end
  return tmp .. "/hot"
end

local function spawn(cmd)
  local p = io.popen(cmd .. " >/dev/null 2>&1 & echo $!")
  local pid = tonumber(p:read("*l"))
  p:close()
  return pid
end

t.case("a pid filter is enforced in BPF: other processes never reach user space", function()
  local bin = hot()
  local a, b = spawn(bin .. " 3000"), spawn(bin .. " 3000")
  local s = assert(lupe.session{ frequency = 499 })
  s:filter("pid == " .. a)
  -- Samples taken between the session's start and the filter are filtered in Lua; from
  -- here on, none may arrive.
  s._s:poll(0)
  local before = s:profile().stats.filtered_by_script
  local p = s:run{ duration = 1 }
  s:close()
  os.execute("kill " .. a .. " " .. b .. " 2>/dev/null")
  local n = 0
  for _, e in ipairs(p.entries) do
    check(e.pid == a, "an entry of pid %d got through", e.pid)
    n = n + e.count
  end
  -- Loose counts: the machine may be shared, and the target get a fraction of a CPU.
  check(n > 20, "only %d samples of the target", n)
  check(p.stats.filtered > 20, "BPF filtered only %d samples", p.stats.filtered)
  check(p.stats.filtered_by_script == before, "%d samples reached the Lua filter",
    p.stats.filtered_by_script - before)
end)

t.case("a comm and frame filter keeps only matching stacks, counting the rest", function()
  local bin = hot()
  local a = spawn(bin .. " 3000")
  local s = assert(lupe.session{ frequency = 499 })
  s:filter("comm ~ 'ho?' and frame ~ 'hot_*'")
  local p = s:run{ duration = 1 }
  s:close()
  os.execute("kill " .. a .. " 2>/dev/null")
  local n = 0
  for _, e in ipairs(p.entries) do
    check(e.comm == "hot", "comm %s got through", e.comm)
    n = n + e.count
  end
  check(n > 20, "only %d samples kept", n)
  check(p.stats.filtered_by_script > 0, "nothing was filtered out (whole system for 1 s?)")
end)

t.case("a bad filter raises with the column", function()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  local s = assert(lupe.session{ frequency = 99 })
  local ok, err = pcall(s.filter, s, "pid ==")
  s:close()
  check(not ok and tostring(err):match("filter:7: expected a number"), "got %s", tostring(err))
end)

t.case("frequency changes live, and pause stops sampling", function()
  local bin = hot()
  local a = spawn(bin .. " 4000")
  local s = assert(lupe.session{ frequency = 99, target = { pids = { a } } })
  local p1 = s:run{ duration = 0.6 }
  local n1, seen1 = 0, s:stats().samples_seen
  for _, e in ipairs(p1.entries) do n1 = n1 + e.count end
  assert(s:set_frequency(999))
  local p2 = s:run{ duration = 0.6 }
  local n2, seen2 = 0, s:stats().samples_seen
  for _, e in ipairs(p2.entries) do n2 = n2 + e.count end
  assert(s:pause())
  local p3 = s:run{ duration = 0.4 }
  local n3 = 0
  for _, e in ipairs(p3.entries) do n3 = n3 + e.count end
  s:close()
  os.execute("kill " .. a .. " 2>/dev/null")
  -- Counts accumulate across runs. The sampler's own rate (every CPU, idle or not) shows
  -- the frequency whatever share of a CPU the target gets on a shared machine.
  check(seen1 > 40 and seen1 < 240, "99 Hz for 0.6 s: %d perf events", seen1)
  check(seen2 - seen1 > 5 * seen1, "999 Hz: %d perf events after %d", seen2 - seen1, seen1)
  check(n2 > n1 and n1 > 0, "the target got %d then %d", n1, n2)
  check(n3 - n2 <= 5, "paused, yet %d more samples", n3 - n2)
end)

t.case("on_trace judges each unique trace once; a failing hook is counted, not fatal", function()
  local bin = hot()
  local a = spawn(bin .. " 3000")
  local s = assert(lupe.session{ frequency = 499, target = { pids = { a } } })
  local seen, calls = {}, 0
  s:on_trace(function(tr)
    calls = calls + 1
    check(not seen[tr.hash], "trace %s judged twice", tr.hash)
    seen[tr.hash] = true
    for _, f in ipairs(tr.frames) do
      if f.name == "hot_inner" then return false end
    end
    return true
  end)
  local intervals = 0
  s:on_interval(0.2, function() intervals = intervals + 1 error("interval boom") end)
  local p = s:run{ duration = 1 }
  s:close()
  os.execute("kill " .. a .. " 2>/dev/null")
  check(calls > 0, "on_trace never called")
  for _, e in ipairs(p.entries) do
    for _, f in ipairs(e.frames) do check(f.name ~= "hot_inner", "a dropped trace got through") end
  end
  check(intervals >= 3, "on_interval ran %d times", intervals)
  check(p.stats.hook_errors == intervals, "%d hook errors counted for %d failures",
    p.stats.hook_errors, intervals)
end)

t.case("on_interval batches are views of the aggregate: their counts add up to the profile", function()
  local bin = hot()
  local a = spawn(bin .. " 3000")
  local s = assert(lupe.session{ frequency = 499, target = { pids = { a } } })
  local sum, batches, frames_ok = 0, 0, true
  s:on_interval(0.2, function(b)
    batches = batches + 1
    for i = 1, #b do
      sum = sum + b:count(i)
      check(b:pid(i) == a, "pid %d in the batch", b:pid(i))
      -- One frame table per unique trace, shared across batches.
      frames_ok = frames_ok and b:frames(i) == s:trace(b:trace(i)).frames
    end
  end)
  local p = s:run{ duration = 1 }
  s:flush_interval()   -- what the last interval held
  s:close()
  os.execute("kill " .. a .. " 2>/dev/null")
  local total = 0
  for _, e in ipairs(p.entries) do total = total + e.count end
  check(batches >= 4, "%d batches", batches)
  check(total > 20 and sum == total, "batches held %d samples, the profile %d", sum, total)
  check(frames_ok, "a batch's frames are not the session's trace frames")
end)

t.case("user = false samples kernel stacks only; max_frames bounds user stacks", function()
  local bin = hot()
  local a = spawn(bin .. " 3000")
  local s = assert(lupe.session{ frequency = 499, user = false, target = { pids = { a } } })
  local p = s:run{ duration = 0.5 }
  check(p.stats.bpf_map_bytes > 1e6, "BPF maps take %d bytes?", p.stats.bpf_map_bytes)
  s:close()
  for _, e in ipairs(p.entries) do
    for _, f in ipairs(e.frames) do check(f.kind == "kernel", "a %s frame with user = false", f.kind) end
  end
  s = assert(lupe.session{ frequency = 499, max_frames = 2, target = { pids = { a } } })
  p = s:run{ duration = 0.5 }
  s:close()
  os.execute("kill " .. a .. " 2>/dev/null")
  local n = 0
  for _, e in ipairs(p.entries) do
    local user = 0
    for _, f in ipairs(e.frames) do if f.kind == "native" or f.kind == "unknown" then user = user + 1 end end
    check(user <= 2, "%d user frames with max_frames = 2", user)
    n = n + e.count
  end
  check(n > 20, "only %d samples", n)
end)

local rc = t.run_all()
if tmp then os.execute("rm -rf " .. tmp) end
return rc
