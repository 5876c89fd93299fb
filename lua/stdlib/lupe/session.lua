-- Profiling sessions: what to sample, hooks on the aggregate, and the run loop.
--
--   local s = lupe.session{ frequency = 99, kernel = true,
--                           target = "system" | {pids = {...}} | {command = {...}}
--                                    | {cgroup = "/sys/fs/cgroup/..."} }
--   s:on_interval(1.0, function(batch) ... end)   -- traces sampled since the last call
--   s:on_end(function(profile) ... end)           -- the whole profile, once
--   local profile = s:run{ duration = 10 }        -- until duration, the command's exit,
--                                                 -- or Ctrl-C (which still runs on_end)
-- The hot path stays in C: hooks see aggregated, symbolized traces, never samples.
local native = require("lupe.native").session
local u64 = require "lupe.u64"

local M = {}
local from_c = u64.from_c
local type, error, ipairs, pairs, setmetatable = type, error, ipairs, pairs, setmetatable
local xpcall, tostring = xpcall, tostring

local Session = {}
Session.__index = Session

-- Monotonic seconds: ktime through the process manager's clock.
local now do
  local pm = require("lupe.native").procmgr
  local ffi = require "ffi"
  now = function() return tonumber(ffi.cast("const uint64_t *", pm.ktime_now())[0]) / 1e9 end
end
M.now = now

local function apply_target(s, target)
  if target == nil or target == "system" then
    return s._s:target_system()
  end
  if type(target) ~= "table" then
    error("session: target must be \"system\" or a table, not " .. tostring(target), 3)
  end
  if target.pids then return s._s:target_pids(target.pids) end
  if target.cgroup then return s._s:target_cgroup(target.cgroup) end
  if target.command then
    local pid, msg, errno = s._s:start_command(target.command)
    if not pid then return nil, msg, errno end
    s.command_pid = pid
    return true
  end
  error("session: target needs one of pids, command, cgroup", 3)
end

-- Frames of trace idx, converted once and shared by every entry that has that trace.
function Session:trace(idx)
  local t = self._traces[idx]
  if t then return t end
  t = self._s:trace(idx)
  for _, f in ipairs(t.frames) do
    f.addr = from_c(f.addr)
    if f.offset then f.offset = from_c(f.offset) end
  end
  self._traces[idx] = t
  return t
end

-- Runs a hook. An error is reported once per hook with its traceback and counted; the
-- session goes on, unless it was created with on_hook_error = "stop".
local function call_hook(self, name, fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if ok then return true, err end
  local n = (self._hook_errors[name] or 0) + 1
  self._hook_errors[name] = n
  if n == 1 then
    require("lupe.log").error("%s hook failed (reported once, counted): %s", name, tostring(err))
  end
  if self._stop_on_hook_error then error(name .. " hook failed: " .. tostring(err), 0) end
  return false
end

-- on_trace: the verdict for every trace seen since the last call, once per unique trace.
local function judge_new_traces(self)
  local fn = self._on_trace
  if not fn then return end
  local n = self._s:ntraces()
  for idx = self._judged + 1, n do
    local ok, verdict = call_hook(self, "on_trace", fn, self:trace(idx))
    -- A failing hook keeps the trace: losing data silently is worse than keeping it.
    self._trace_verdicts[idx] = not ok or verdict ~= false
  end
  self._judged = n
end

-- The filter's verdict per (trace, pid, comm): decided once, as the entry first shows up.
local function keep(self, e)
  if self._on_trace and self._trace_verdicts[e.trace] == false then return false end
  local f = self._filter
  if not f then return true end
  local key = e.trace .. ":" .. e.pid .. ":" .. e.comm
  local v = self._verdicts[key]
  if v == nil then
    v = f.match(e) and true or false
    self._verdicts[key] = v
  end
  return v
end

local function snapshot(self, interval_only)
  judge_new_traces(self)
  local entries, kept, dropped = self._s:entries(interval_only), {}, 0
  for _, e in ipairs(entries) do
    local t = self:trace(e.trace)
    e.frames, e.hash = t.frames, t.hash
    if interval_only then e.count = e.interval end
    if keep(self, e) then kept[#kept + 1] = e else dropped = dropped + e.count end
  end
  return kept, dropped
end

-- Keeps only what matches a filter expression (see lupe/filter.lua). The pids it implies
-- are pushed into BPF, so other processes are never sampled at all; the rest is decided
-- once per unique trace. Raises on a syntax error.
function Session:filter(src)
  local f, err = require("lupe.filter").compile(src)
  if not f then error(err, 2) end
  self._filter, self._verdicts = f, {}
  local pids = f.pids()
  if pids and self._target_desc == "system" then
    local ok, msg = self._s:target_pids(pids)
    if not ok then error("filter: " .. msg, 2) end
  end
  return self
end

function Session:on_interval(seconds, fn)
  if type(seconds) ~= "number" or seconds <= 0 then error("on_interval: seconds must be > 0", 2) end
  if type(fn) ~= "function" then error("on_interval: expected a function", 2) end
  self._interval, self._on_interval = seconds, fn
  return self
end

-- fn(trace) -> false to drop the trace: called once per unique trace (frames, hash), its
-- verdict remembered. Without an on_trace hook nothing of this runs.
function Session:on_trace(fn)
  if type(fn) ~= "function" then error("on_trace: expected a function", 2) end
  self._on_trace = fn
  return self
end

function Session:on_end(fn)
  if type(fn) ~= "function" then error("on_end: expected a function", 2) end
  self._on_end = fn
  return self
end

function Session:stats() return self._s:stats() end
function Session:set_frequency(hz) return self._s:set_frequency(hz) end
function Session:frequency() return self._s:frequency() end
function Session:pause() return self._s:pause() end
function Session:resume() return self._s:resume() end

-- The profile so far: { entries = {...}, stats = {...}, duration = s, frequency = hz }.
-- Each entry: count, pid, comm, hash, frames (leaf first: name, module, addr, offset, kind).
function Session:profile()
  local entries, dropped = snapshot(self, false)
  local stats = self:stats()
  stats.filtered_by_script = dropped
  stats.hook_errors = 0
  for _, n in pairs(self._hook_errors) do stats.hook_errors = stats.hook_errors + n end
  return {
    entries = entries,
    stats = stats,
    duration = (self._stopped or now()) - self._started,
    frequency = self:frequency(),
    target = self._target_desc,
    exit_status = self.exit_status,
  }
end

-- Runs until opts.duration seconds pass, the command exits, opts.stop() returns true, or
-- SIGINT/SIGTERM. Returns the profile (after on_end, if any).
function Session:run(opts)
  opts = opts or {}
  local duration = opts.duration
  -- A short drain period keeps short-lived processes readable: a sample's process is
  -- synchronized while it most likely still runs. A drain costs microseconds.
  local poll_ms = opts.poll_ms or 10
  native.install_signal_handlers()
  local started = now()
  self._stopped = nil
  local next_interval = self._interval and started + self._interval
  while true do
    local t = now()
    local wait = poll_ms
    if duration then wait = math.min(wait, math.max(0, (started + duration - t) * 1000)) end
    local n, msg = self._s:poll(math.floor(wait))
    if not n then error("session: " .. msg, 2) end
    t = now()
    if self._on_trace then judge_new_traces(self) end
    next_interval = next_interval or (self._interval and t + self._interval) -- set by a reload
    if self._on_interval and t >= next_interval then
      call_hook(self, "on_interval", self._on_interval, snapshot(self, true))
      self._s:interval_reset()
      next_interval = t + self._interval
    end
    if native.interrupted() then break end
    if opts.stop and opts.stop() then break end
    if duration and t - started >= duration then break end
    if self.command_pid then
      local done, status = self._s:command_done()
      if done then self.exit_status = status break end
    end
  end
  -- One last drain: samples captured before the stop are not lost.
  self._s:poll(0)
  self._stopped = now()
  local profile = self:profile()
  if self._on_end then call_hook(self, "on_end", self._on_end, profile) end
  return profile
end

function Session:close()
  self._s:close()
end

-- Hot reload (lupe/watch.lua): forgets every hook (every _on_* field, whoever added it) and
-- the filter, so that a reloaded script starts clean on the same live session; samples,
-- traces and the process table stay. Returns what was forgotten, for restore_hooks().
local reload_fields = { _interval = true, _filter = true, _verdicts = true,
                        _trace_verdicts = true, _judged = true }
function Session:clear_hooks()
  local saved = {}
  for k, v in pairs(self) do
    if reload_fields[k] or k:match("^_on_") then saved[k] = v end
  end
  for k in pairs(saved) do self[k] = nil end
  self._verdicts, self._trace_verdicts, self._judged = {}, {}, 0
  -- The pids a filter pushed into BPF go with it.
  if saved._filter and saved._filter.pids() and self._target_desc == "system" then
    self._s:target_system()
  end
  return saved
end

-- Puts back what clear_hooks() returned (a reloaded script failed half-way).
function Session:restore_hooks(saved)
  if self._filter and self._filter.pids() and self._target_desc == "system" then
    self._s:target_system()
  end
  for k in pairs(reload_fields) do self[k] = nil end
  for k in pairs(self) do if k:match("^_on_") then self[k] = nil end end
  for k, v in pairs(saved) do self[k] = v end
  local pids = self._filter and self._filter.pids()
  if pids and self._target_desc == "system" then self._s:target_pids(pids) end
  self._verdicts = self._verdicts or {}
  self._trace_verdicts = self._trace_verdicts or {}
  self._judged = self._judged or 0
end

-- opts: frequency (Hz per CPU, default 99), kernel (default true), target,
-- unwind (default true: native unwinding from .eh_frame; false: frame pointers),
-- filter_error_frames, on_hook_error ("continue", the default, or "stop").
-- Returns a session, or nil, message, errno.
function M.session(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("session: expected an options table", 2) end
  local s, msg, errno = native.new{ frequency = opts.frequency, kernel = opts.kernel ~= false,
                                    filter_error_frames = opts.filter_error_frames,
                                    unwind = opts.unwind }
  if not s then return nil, msg, errno end
  local self = setmetatable({ _s = s, _traces = {}, _started = now(), _hook_errors = {},
                              _trace_verdicts = {}, _judged = 0,
                              _stop_on_hook_error = opts.on_hook_error == "stop" }, Session)
  local ok, emsg, eno = apply_target(self, opts.target)
  if not ok then s:close() return nil, emsg, eno end
  self._target_desc = opts.target or "system"
  self._started = now()
  return self
end

return M
