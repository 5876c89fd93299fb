-- Sampling policy, live: how often, when and whom a running session samples. Nothing here
-- restarts the sampler; the process table, caches and counts carry over every change.
--
--   local p = require("lupe.policy").new(s)
--   p:frequency(499)                         -- the perf events' rate, per CPU
--   p:pause() ... p:resume()
--   p:window{ period = 1, fraction = 0.25 }  -- sample during ~1/4 of the 1 s windows
--   p:rates{ default = 19, pids = { [pid] = 499 }, cgroups = { [dir] = 99 } }
--   p:trigger{ comm = "make*", seconds = 10 } -- sample a command from its exec, 10 s
--
-- Rates are decided in BPF: the events run at the highest rate asked for and each target
-- keeps one sample in N of them (N = round(highest / its rate)), so a 19 Hz target of a
-- 499 Hz sampler keeps 1 in 26 (19.2 Hz). Windows are decided in BPF too, per window from
-- its index and a seed: the open ones are spread over time and repeatable. Triggers need a
-- session that samples pids (target = { pids = {} } samples nothing until one fires).
local M = {}
local floor, max, type, pairs, ipairs, error = math.floor, math.max, type, pairs, ipairs, error
local tostring = tostring

-- ---- decisions (pure: the specs test these) -----------------------------------------

-- Keep one sample in N so that a sampler at base_hz gives about hz to a target.
function M.every(base_hz, hz)
  if type(base_hz) ~= "number" or base_hz <= 0 or type(hz) ~= "number" or hz <= 0 then
    error("policy.every: rates must be numbers > 0", 2)
  end
  return max(1, floor(base_hz / hz + 0.5))
end

-- The rate a target gets from a base_hz sampler keeping one in every.
function M.effective_hz(base_hz, every) return base_hz / every end

-- The sampler's rate for a set of wanted rates: the highest of them.
function M.base_hz(rates)
  local base = rates.default or 0
  for _, kind in ipairs({ "pids", "cgroups" }) do
    for _, hz in pairs(rates[kind] or {}) do base = max(base, hz) end
  end
  return base
end

-- Whether BPF samples at time t_ns with windows of period_ns open a fraction of the time
-- (the C function the sampler's decision mirrors).
function M.window_open(t_ns, period_ns, fraction, seed)
  return require("lupe.native").session.window_open(t_ns, period_ns, fraction, seed or 0)
end

-- Globs as in filters: * any run, ? one character, matched against the whole comm.
local function glob(g)
  return "^" .. g:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$"
end

-- A trigger's state machine: event(ev, t) and tick(t) return the actions to take, as a
-- list of { "start" | "stop", pid }. A process whose comm matches starts being sampled at
-- its exec (or fork, or first sync); it stops after `seconds` (or at its exit). once: only
-- the first matching process.
local Trigger = {}
Trigger.__index = Trigger
M.Trigger = Trigger

function M.trigger_state(opts)
  if type(opts) ~= "table" or type(opts.comm) ~= "string" then
    error("trigger: expected { comm = 'glob', seconds = N }", 2)
  end
  if opts.seconds ~= nil and (type(opts.seconds) ~= "number" or opts.seconds <= 0) then
    error("trigger: seconds must be > 0", 2)
  end
  return setmetatable({ pattern = glob(opts.comm), seconds = opts.seconds, once = opts.once,
                        active = {}, fired = 0 }, Trigger)
end

function Trigger:event(ev, t)
  local out = {}
  if ev.type == "exit" then
    if self.active[ev.pid] then
      self.active[ev.pid] = nil
      out[1] = { "stop", ev.pid }
    end
    return out
  end
  if self.active[ev.pid] or (self.once and self.fired > 0) then return out end
  if ev.comm:match(self.pattern) then
    self.active[ev.pid] = t
    self.fired = self.fired + 1
    out[1] = { "start", ev.pid }
  end
  return out
end

function Trigger:tick(t)
  local out = {}
  if not self.seconds then return out end
  for pid, started in pairs(self.active) do
    if t - started >= self.seconds then out[#out + 1] = { "stop", pid } end
  end
  for _, a in ipairs(out) do self.active[a[2]] = nil end
  return out
end

-- ---- a policy on a live session -----------------------------------------------------

local Policy = {}
Policy.__index = Policy

function M.new(session)
  if type(session) ~= "table" or not session._s then error("policy.new: expected a session", 2) end
  local self = setmetatable({ s = session, triggers = {}, wanted = nil, log = {} }, Policy)
  return self
end

local function check(ok, msg, level)
  if not ok then error("policy: " .. tostring(msg), level or 3) end
  return true
end

-- Changes the frequency live (counts, caches and processes carry over).
function Policy:frequency(hz)
  if type(hz) ~= "number" or hz < 1 then error("policy:frequency: expected Hz >= 1", 2) end
  check(self.s:set_frequency(floor(hz)))
  if self.wanted then self:_apply_rates() end
  return self
end

function Policy:pause() check(self.s:pause()) return self end
function Policy:resume() check(self.s:resume()) return self end

-- { period = seconds, fraction = 0..1, seed = n }; nil or {} turns windows off.
function Policy:window(w)
  w = w or {}
  local period, fraction = w.period or 0, w.fraction or 1
  if type(period) ~= "number" or period < 0 then error("policy:window: period in seconds", 2) end
  if type(fraction) ~= "number" or fraction < 0 or fraction > 1 then
    error("policy:window: fraction from 0 to 1", 2)
  end
  check(self.s._s:window(period, fraction, w.seed or 0))
  self.current_window = period > 0 and { period = period, fraction = fraction, seed = w.seed or 0 }
  return self
end

-- Per-target rates in Hz: { default = hz (everyone else), pids = { [pid] = hz },
-- cgroups = { [dir] = hz } }. The sampler runs at the highest; see the header.
function Policy:rates(r)
  if type(r) ~= "table" then error("policy:rates: expected a table", 2) end
  local old = self.wanted
  self.wanted = { default = r.default, pids = r.pids or {}, cgroups = r.cgroups or {} }
  local base = M.base_hz(self.wanted)
  if base <= 0 then error("policy:rates: no rate given", 2) end
  if floor(base) ~= self.s:frequency() then check(self.s:set_frequency(floor(base))) end
  -- Targets no longer listed sample at the default again.
  if old then
    for pid in pairs(old.pids) do
      if not self.wanted.pids[pid] then self.s._s:rate_pid(pid, 0) end
    end
    for dir in pairs(old.cgroups) do
      if not self.wanted.cgroups[dir] then self.s._s:rate_cgroup(dir, 0) end
    end
  end
  self:_apply_rates()
  return self
end

-- One target's rate, the others unchanged (hz = nil removes it).
function Policy:rate_pid(pid, hz)
  local r = self.wanted or { pids = {}, cgroups = {} }
  local pids = {}
  for k, v in pairs(r.pids) do pids[k] = v end
  pids[pid] = hz
  return self:rates{ default = r.default or self.s:frequency(), pids = pids, cgroups = r.cgroups }
end

function Policy:_apply_rates()
  local base, w = self.s:frequency(), self.wanted
  for pid, hz in pairs(w.pids) do check(self.s._s:rate_pid(pid, M.every(base, hz)), nil, 4) end
  for dir, hz in pairs(w.cgroups) do check(self.s._s:rate_cgroup(dir, M.every(base, hz)), nil, 4) end
  check(self.s._s:rate_default(w.default and M.every(base, w.default) or 1), nil, 4)
end

-- Starts sampling processes whose comm matches when they appear (exec, fork or first
-- sight), for opts.seconds (default: until they exit). opts.follow (default true) also
-- samples their children; opts.once: the first match only; opts.on_start(pid, comm) and
-- opts.on_stop(pid) are told.
function Policy:trigger(opts)
  local st = M.trigger_state(opts)
  local follow = opts.follow ~= false
  local s = self.s
  local function act(actions, comm)
    for _, a in ipairs(actions) do
      if a[1] == "start" then
        if s._s:target_add_pid(a[2], follow) and opts.on_start then opts.on_start(a[2], comm) end
      else
        s._s:target_remove_pid(a[2])
        if opts.on_stop then opts.on_stop(a[2]) end
      end
    end
  end
  s:_listen_processes(function(ev) act(st:event(ev, ev.ktime), ev.comm) end)
  s:_add_ticker(function(t) act(st:tick(t)) end)
  self.triggers[#self.triggers + 1] = st
  return st
end

return M
