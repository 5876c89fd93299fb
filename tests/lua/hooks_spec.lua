-- Hook semantics on synthetic batches: on_trace once per unique trace, verdicts cached,
-- errors reported once and counted, runaway hooks interrupted, on_process events.
local lupe = require "lupe"

local function feed(s, samples)
  for _, x in ipairs(samples) do assert(s:inject(x[1], x[2], x[3])) end
  s:poll(0)
end

describe("session hooks", function()
  local s
  before_each(function() s = assert(lupe.session{ offline = true }) end)
  after_each(function() s:close() end)

  it("calls on_trace once per unique trace and caches its verdict", function()
    local calls = {}
    s:on_trace(function(t)
      calls[t.hash] = (calls[t.hash] or 0) + 1
      return t.frames[1].addr ~= 0x2000
    end)
    feed(s, { { 1, "a", { 0x1000 } }, { 2, "b", { 0x1000 } }, { 1, "a", { 0x2000 } } })
    feed(s, { { 1, "a", { 0x1000 } }, { 3, "c", { 0x2000 } }, { 3, "c", { 0x3000 } } })
    local n = 0
    for _, c in pairs(calls) do
      assert.are.equal(1, c)
      n = n + 1
    end
    assert.are.equal(3, n)
    local b = s:batch()
    -- 0x2000 traces dropped (two entries, two samples), the rest kept.
    assert.are.equal(2, b.dropped)
    assert.are.equal(4, b:total())
    for i = 1, #b do assert.are_not.equal(0x2000, b:frames(i)[1].addr) end
  end)

  it("starts over after s:reset(): verdicts and trace indexes are redone, counters stay", function()
    local calls = 0
    s:on_trace(function(t)
      calls = calls + 1
      return t.frames[1].addr ~= 0x2000
    end)
    s:filter("comm != 'b'")
    feed(s, { { 1, "a", { 0x1000 } }, { 2, "b", { 0x1000 } }, { 1, "a", { 0x2000 } } })
    local b = s:batch()
    assert.are.equal(1, b:total())
    assert.are.equal(2, calls)
    s:reset()
    assert.are.equal(0, #s:batch())
    assert.are.equal(1, s:stats().resets)
    assert.are.equal(3, s:stats().samples)
    -- The same traces again: each judged afresh, at index 1.
    feed(s, { { 2, "b", { 0x1000 } }, { 1, "a", { 0x2000 } }, { 1, "a", { 0x1000 } } })
    assert.are.equal(4, calls)
    b = s:batch()
    assert.are.equal(1, #b)
    assert.are.equal(1, b:total())
    assert.are.equal("a", b:comm(1))
    assert.are.equal(0x1000, b:frames(1)[1].addr)
    assert.are.equal(1, s:trace(1).frames[1].addr == 0x1000 and 1 or 0)
    assert.are.equal(6, s:stats().samples)
  end)

  it("keeps a trace whose on_trace hook fails, reports once and counts each failure", function()
    local logged = 0
    local log = require "lupe.log"
    local orig = log.error
    log.error = function() logged = logged + 1 end
    s:on_trace(function() error("boom") end)
    feed(s, { { 1, "a", { 0x1000 } }, { 1, "a", { 0x1001 } } })
    log.error = orig
    assert.are.equal(1, logged)
    local st = s:stats()
    assert.are.equal(2, st.hook_errors)
    assert.are.equal(2, st.hook_errors_by_hook.on_trace)
    assert.are.equal(2, #s:batch())
  end)

  it("stops the session on a hook error when asked to", function()
    local t = assert(lupe.session{ offline = true, on_hook_error = "stop" })
    t:on_interval(100, function() error("bad") end)
    assert.has_error(function() t:flush_interval() end)
    t:close()
  end)

  it("interrupts an on_trace hook that runs past hook_timeout, even a hot loop", function()
    local t = assert(lupe.session{ offline = true, hook_timeout = 0.2 })
    local function spin(n) local x = 0 for i = 1, n do x = x + i end return x end
    for _ = 1, 100 do spin(1000) end
    local calls = 0
    t:on_trace(function() calls = calls + 1 return spin(1e15) end)
    feed(t, { { 1, "a", { 0x1000 } } })
    assert.are.equal(1, calls)
    assert.are.equal(1, t:stats().hook_errors)
    -- Interrupted hooks keep their trace.
    assert.are.equal(1, #t:batch())
    t:close()
  end)

  it("interrupts a batch hook past hook_timeout with strict_hooks, even a compiled loop", function()
    local t = assert(lupe.session{ offline = true, hook_timeout = 0.2, strict_hooks = true })
    -- Warm the loop up so the JIT would have compiled it.
    local function spin(n) local x = 0 for i = 1, n do x = x + i end return x end
    for _ = 1, 100 do spin(1000) end
    local finished = false
    t:on_interval(100, function() spin(1e15) finished = true end)
    local started = os.clock()
    t:flush_interval()
    assert.is_false(finished)
    assert.is_true(os.clock() - started < 10)
    assert.are.equal(1, t:stats().hook_errors)
    t:close()
  end)

  it("costs nothing when no hook is set: no verdicts, nothing dropped", function()
    feed(s, { { 1, "a", { 0x1000 } } })
    assert.is_nil(s._on_trace)
    assert.are.equal(0, s._judged)
    assert.are.equal(0, s:batch().dropped)
    assert.is_falsy(s._events_wanted)
  end)

  it("hands process events to on_process, once each, in order", function()
    local seen = {}
    s:on_process(function(ev) seen[#seen + 1] = ev.type .. ":" .. ev.pid .. ":" .. ev.comm end)
    assert(s:inject_event("fork", 70, 1, "sh"))
    assert(s:inject_event("exec", 70, 1, "ls"))
    assert(s:inject_event("exit", 70, 1, "ls"))
    s:poll(0)
    s:poll(0)
    assert.are.same({ "fork:70:sh", "exec:70:ls", "exit:70:ls" }, seen)
    -- Removed: events are no longer queued.
    s:on_process(nil)
    assert(s:inject_event("exec", 71, 1, "ls"))
    s:poll(0)
    assert.are.equal(3, #seen)
  end)
end)
