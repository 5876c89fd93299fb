local policy = require "lupe.policy"

-- A session double that records what the policy asks of the sampler.
local function fake_session()
  local calls = {}
  local native = setmetatable({}, { __index = function(_, k)
    return function(_, ...) calls[#calls + 1] = { k, ... } return true end
  end })
  local s = { _s = native, hz = 99, calls = calls, listeners = {}, tickers = {} }
  function s.set_frequency(self, hz) self.hz = hz calls[#calls + 1] = { "set_frequency", hz } return true end
  function s.frequency(self) return self.hz end
  function s.pause() calls[#calls + 1] = { "pause" } return true end
  function s.resume() calls[#calls + 1] = { "resume" } return true end
  function s._listen_processes(self, fn) self.listeners[#self.listeners + 1] = fn end
  function s._add_ticker(self, fn) self.tickers[#self.tickers + 1] = fn end
  return s
end

local function find(calls, name)
  local out = {}
  for _, c in ipairs(calls) do if c[1] == name then out[#out + 1] = c end end
  return out
end

describe("lupe.policy", function()
  it("keeps one sample in N so that each target gets about its rate", function()
    assert.are.equal(1, policy.every(499, 499))
    assert.are.equal(26, policy.every(499, 19))
    assert.are.equal(5, policy.every(499, 99))
    assert.are.equal(1, policy.every(99, 499))
    assert.is_true(math.abs(policy.effective_hz(499, policy.every(499, 19)) - 19) < 1)
    assert.has_error(function() policy.every(0, 1) end)
  end)

  it("runs the sampler at the highest rate asked for", function()
    assert.are.equal(499, policy.base_hz{ default = 19, pids = { [1] = 499, [2] = 99 } })
    assert.are.equal(99, policy.base_hz{ default = 99, cgroups = { x = 49 } })
  end)

  it("opens about the asked fraction of windows, spread out, repeatably", function()
    local period, open, runs, longest, run = 1e8, 0, 0, 0, 0
    local u64 = require "lupe.u64"
    for k = 0, 9999 do
      local t = u64.to_c(u64.of(k) * period + 5)
      local o = policy.window_open(t, period, 0.25, 7)
      if o then open = open + 1 run = run + 1 else run = 0 end
      if run > longest then longest = run end
      if o and run == 1 then runs = runs + 1 end
      -- The same window decides the same way at any time within it.
      assert.are.equal(o, policy.window_open(u64.to_c(u64.of(k) * period + period - 1), period, 0.25, 7))
    end
    assert.is_true(open > 2300 and open < 2700, "open windows: " .. open)
    assert.is_true(runs > 1500, "open windows come in few runs: " .. runs)
    assert.is_true(longest < 20)
    assert.is_true(policy.window_open(12345, 0, 0, 0))      -- no windows: always
    assert.is_false(policy.window_open(12345, period, 0, 0)) -- fraction 0: never
    assert.is_true(policy.window_open(12345, period, 1, 0))
  end)

  it("sets per-target rates in BPF and the frequency to the highest", function()
    local s = fake_session()
    local p = policy.new(s)
    p:rates{ default = 19, pids = { [42] = 499 } }
    assert.are.equal(499, s.hz)
    assert.are.same({ { "rate_pid", 42, 1 } }, find(s.calls, "rate_pid"))
    assert.are.same({ { "rate_default", 26 } }, find(s.calls, "rate_default"))
    -- A pid no longer listed goes back to the default; the sampler slows to the highest.
    p:rates{ default = 19, pids = { [7] = 99 } }
    assert.are.equal(99, s.hz)
    local r = find(s.calls, "rate_pid")
    assert.are.same({ "rate_pid", 42, 0 }, r[2])
    assert.are.same({ "rate_pid", 7, 1 }, r[3])
    assert.are.same({ "rate_default", 5 }, find(s.calls, "rate_default")[2])
    -- A frequency change recomputes every N.
    p:frequency(999)
    assert.are.same({ "rate_pid", 7, 10 }, find(s.calls, "rate_pid")[4])
    assert.are.same({ "rate_default", 53 }, find(s.calls, "rate_default")[3])
  end)

  it("pauses, resumes and sets windows live", function()
    local s = fake_session()
    local p = policy.new(s)
    p:pause():resume():window{ period = 0.5, fraction = 0.1, seed = 3 }
    assert.are.same({ "pause" }, s.calls[1])
    assert.are.same({ "resume" }, s.calls[2])
    assert.are.same({ "window", 0.5, 0.1, 3 }, s.calls[3])
    p:window()
    assert.are.same({ "window", 0, 1, 0 }, s.calls[4])
    assert.has_error(function() p:window{ period = 1, fraction = 2 } end)
  end)

  it("starts a matching command at its exec and stops it after N seconds", function()
    local st = policy.trigger_state{ comm = "mak?*", seconds = 2 }
    assert.are.same({}, st:event({ type = "exec", pid = 5, comm = "ls" }, 0))
    assert.are.same({ { "start", 6 } }, st:event({ type = "exec", pid = 6, comm = "make" }, 1))
    assert.are.same({}, st:event({ type = "exec", pid = 6, comm = "make" }, 1.5))
    assert.are.same({ { "start", 8 } }, st:event({ type = "fork", pid = 8, comm = "makeinfo" }, 2))
    assert.are.same({}, st:tick(2.9))
    assert.are.same({ { "stop", 6 } }, st:tick(3))
    assert.are.same({ { "stop", 8 } }, st:event({ type = "exit", pid = 8, comm = "makeinfo" }, 3.5))
    assert.are.same({}, st:tick(10))
    local once = policy.trigger_state{ comm = "a", once = true }
    assert.are.equal(1, #once:event({ type = "exec", pid = 1, comm = "a" }, 0))
    assert.are.equal(0, #once:event({ type = "exec", pid = 2, comm = "a" }, 0))
    assert.has_error(function() policy.trigger_state{ comm = "a", seconds = -1 } end)
  end)

  it("wires triggers to the session's targets", function()
    local s = fake_session()
    local started = {}
    policy.new(s):trigger{ comm = "hot", seconds = 1,
                           on_start = function(pid) started[#started + 1] = pid end }
    s.listeners[1]{ type = "exec", pid = 9, comm = "hot", ktime = 100 }
    assert.are.same({ "target_add_pid", 9, true }, s.calls[1])
    assert.are.same({ 9 }, started)
    s.tickers[1](100.5)
    assert.are.equal(1, #s.calls)
    s.tickers[1](101)
    assert.are.same({ "target_remove_pid", 9 }, s.calls[2])
  end)
end)
