-- Profiling sessions: what to sample, hooks on the aggregate, and the run loop.
--
--   local s = lupe.session{ frequency = 99, kernel = true, user = true, max_frames = 128,
--                           target = "system" | {pids = {...}} | {command = {...}}
--                                    | {cgroup = "/sys/fs/cgroup/..."} }
--   s:filter("comm ~ 'ngin*' and not kernel")     -- BPF drops what it can, once per entry
--   s:on_trace(function(t) return keep end)       -- once per unique trace, verdict cached
--   s:on_interval(1.0, function(batch) ... end)   -- traces sampled since the last call
--   s:on_process(function(ev) ... end)            -- exec, exit, fork, sync
--   s:on_end(function(profile) ... end)           -- the whole profile, once
--   local profile = s:run{ duration = 10 }        -- until duration, the command's exit,
--                                                 -- or Ctrl-C (which still runs on_end)
--   s:reset()                                     -- forget the aggregate (export, then this)
-- The hot path stays in C: hooks see aggregated, symbolized traces, never samples. A hook
-- that is not set costs nothing: the C core skips verdicts, batches and event queues.
--
-- A batch (on_interval) is a zero-copy view of the C aggregate, valid during the call:
--   #batch, batch:count(i), batch:pid(i), batch:comm(i), batch:frames(i) (one table per
--   unique trace, made on first use and shared), batch:hash(i), batch:entry(i) (the C
--   struct: trace, pid, comm, count, interval, first_ktime, last_ktime), batch.dropped.
--
-- Record and replay (docs/raw-format.md): lupe.session{ raw = "F" } also writes what the
-- session sees to F; lupe.session{ replay = "F" } runs the same script offline from F
-- (no BPF, no privileges; target and frequency are then ignored), with the same profile,
-- counters and clock. `lupe run --replay F SCRIPT` (package.loaded["lupe.run_options"])
-- or the environment variable LUPE_REPLAY=F make every session of a script a replay.
-- Intervals, durations and policy ticks follow the session's clock (s:clock(): the end of
-- the last drain; in a replay, as recorded); hook time limits follow the host's.
local native = require("lupe.native").session
local u64 = require "lupe.u64"
local ffi = require "ffi"

local M = {}
local from_c = u64.from_c
local type, error, ipairs, pairs, setmetatable = type, error, ipairs, pairs, setmetatable
local xpcall, tostring, tonumber, fstring = xpcall, tostring, tonumber, ffi.string
local floor = math.floor

-- The C structs Lua reads in place, declared by the binding next to its asserts. A ctype
-- and its metatype live as long as the Lua state, longer than this module when it is
-- loaded again (test runners, script reloads): that state is kept in the registry.
local shared = debug.getregistry()["lupe.session.batch"]
if not shared then
  if not pcall(ffi.typeof, "struct lupe_profile_entry") then ffi.cdef(native.cdef) end
  ffi.cdef [[
  struct lupe_batch_view {
    const struct lupe_profile_entry *e;
    const uint32_t *idx;
    int32_t n;
    int32_t session;     /* key in shared.sessions */
    bool interval;       /* counts are interval counts */
    double dropped;      /* samples the filter and on_trace left out */
  };
  ]]
  -- Batches name their session by id (a cdata cannot hold a Lua reference); weak, so an
  -- unclosed session can still be collected.
  shared = { sessions = setmetatable({}, { __mode = "v" }), next_id = 0, Batch = {} }
  debug.getregistry()["lupe.session.batch"] = shared
end
local entry_ptr = ffi.typeof("const struct lupe_profile_entry *")
local index_ptr = ffi.typeof("const uint32_t *")
local verdict_ptr = ffi.typeof("uint8_t *")
local event_ptr = ffi.typeof("const struct lupe_proc_event *")
local KEEP, DROP = 1, 2

local Session = {}
Session.__index = Session

-- Monotonic seconds: ktime through the process manager's clock.
local now do
  local pm = require("lupe.native").procmgr
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

-- A frame's addr and offset arrive as 8-byte strings and become uint64_t cdata on first
-- use: converting every frame eagerly runs the FFI from interpreted code (the loop calls
-- the C API, which the JIT does not compile) and cost ~1 us per frame; most frames are
-- never asked for their address.
local frame_mt = {
  __index = function(f, k)
    if k == "addr" or k == "offset" then
      local raw = rawget(f, k == "addr" and "_addr" or "_offset")
      if raw == nil then return nil end
      local v = from_c(raw)
      rawset(f, k, v)
      return v
    end
  end,
}

-- Frames of trace idx, made once and shared by every entry that has that trace.
function Session:trace(idx)
  local t = self._traces[idx]
  if t then return t end
  t = self._s:trace(idx)
  for _, f in ipairs(t.frames) do
    f._addr, f._offset, f.addr, f.offset = f.addr, f.offset, nil, nil
    setmetatable(f, frame_mt)
  end
  self._traces[idx] = t
  return t
end

-- ---- batches: zero-copy views ------------------------------------------------------
local sessions, Batch = shared.sessions, shared.Batch

local function entry_of(b, i)
  if i < 1 or i > b.n then error("batch: no entry " .. tostring(i), 3) end
  return b.e[b.idx[i - 1]]
end
function Batch.entry(b, i) return entry_of(b, i) end
function Batch.count(b, i)
  local e = entry_of(b, i)
  return tonumber(b.interval and e.interval or e.count)
end
function Batch.pid(b, i) return entry_of(b, i).pid end
function Batch.comm(b, i) return fstring(entry_of(b, i).comm) end
-- The APM agent's service name of the entry's process, or nil.
function Batch.service(b, i)
  local svc = entry_of(b, i).service
  if svc ~= nil then return fstring(svc) end
end
function Batch.trace(b, i) return entry_of(b, i).trace + 1 end
function Batch.frames(b, i) return sessions[b.session]:trace(entry_of(b, i).trace + 1).frames end
function Batch.hash(b, i) return sessions[b.session]:trace(entry_of(b, i).trace + 1).hash end
function Batch.total(b)
  local n, e, idx = 0, b.e, b.idx
  if b.interval then
    for i = 0, b.n - 1 do n = n + tonumber(e[idx[i]].interval) end
  else
    for i = 0, b.n - 1 do n = n + tonumber(e[idx[i]].count) end
  end
  return n
end
-- The entries as tables (count, pid, comm, hash, frames), as profiles carry them: for
-- output modules. Costs a table per entry.
function Batch.tables(b)
  local out = {}
  for i = 1, b.n do
    local t = sessions[b.session]:trace(b:trace(i))
    out[i] = { count = b:count(i), pid = b:pid(i), comm = b:comm(i), hash = t.hash,
               frames = t.frames, service = b:service(i) }
  end
  return out
end
shared.view = shared.view or ffi.metatype("struct lupe_batch_view", {
  __len = function(b) return b.n end,
  __index = Batch,
})
local batch_view = shared.view

-- A view of the aggregate: entries sampled in this interval (interval) or ever, minus
-- what verdicts dropped when a filter or on_trace hook is set.
local function make_batch(self, interval)
  local verdicts = self._filter ~= nil or self._on_trace ~= nil
  local e, idx, n, dropped = self._s:batch(interval, verdicts)
  if not e then error("session: " .. tostring(idx), 3) end
  return batch_view(ffi.cast(entry_ptr, e), ffi.cast(index_ptr, idx), n, self._id, interval,
                    dropped)
end
M.Batch = Batch

-- ---- hooks -------------------------------------------------------------------------
local function report_hook_error(self, name, err)
  local n = (self._hook_errors[name] or 0) + 1
  self._hook_errors[name] = n
  if n == 1 then
    require("lupe.log").error("%s hook failed (reported once, counted): %s", name, tostring(err))
  end
  if self._stop_on_hook_error then error(name .. " hook failed: " .. tostring(err), 0) end
end

-- A hook that runs past hook_timeout seconds is interrupted by a count hook. LuaJIT does
-- not call count hooks from compiled code, so an airtight guard needs the JIT off (and
-- its traces flushed) during the hook. The per-item hooks (on_trace, on_process) run so,
-- always; the batch hooks (on_interval, on_end) run compiled by default, because
-- interpreted FFI is ~40x slower (a 100 000-entry batch: 0.2 ms compiled, 600 ms not):
-- their guard then catches interpreted code only, and strict_hooks = true makes it
-- airtight. hook_timeout = false: no guard at all.
local guard_deadline
local function guard_check()
  if now() > guard_deadline then
    error("hook timed out (hook_timeout)", 2)
  end
end

local function guarded(self, strict, fn, ...)
  local timeout = self._hook_timeout
  if not timeout then return xpcall(fn, debug.traceback, ...) end
  guard_deadline = now() + timeout
  strict = strict or self._strict_hooks
  if strict then
    jit.off()
    jit.flush()
  end
  debug.sethook(guard_check, "", 10000)
  local ok, err = xpcall(fn, debug.traceback, ...)
  debug.sethook()
  if strict then jit.on() end
  return ok, err
end
local PER_ITEM = { on_trace = true, on_process = true }

-- Runs a hook. An error is reported once per hook with its traceback and counted; the
-- session goes on, unless it was created with on_hook_error = "stop".
local function call_hook(self, name, fn, ...)
  local ok, err = guarded(self, PER_ITEM[name] or false, fn, ...)
  if ok then return true, err end
  report_hook_error(self, name, err)
  return false
end

-- Verdicts for what appeared since the last call: on_trace once per unique trace, the
-- filter once per entry (trace, pid, comm). Written into C's verdict arrays, which the
-- batches read; nothing of this runs without a filter or an on_trace hook.
local scratch = {}
local function judge(self)
  local fn, f = self._on_trace, self._filter
  if not fn and not f then return end
  local ev, tv, ne, nt, entries, relabelled, folds = self._s:verdicts()
  if not ev then error("session: " .. tostring(tv), 3) end
  ev, tv = ffi.cast(verdict_ptr, ev), ffi.cast(verdict_ptr, tv)
  -- C folded exited processes' entries: the judged ones moved down with their verdicts
  -- and still come first, the undecided ones follow. (A new filter or a relabel left 0:
  -- every verdict is redone anyway.)
  if folds ~= self._folds then
    self._folds = folds
    if self._judged_entries > 0 then
      local j = 0
      while j < ne and ev[j] ~= 0 do j = j + 1 end
      self._judged_entries = j
    end
  end
  if fn and nt > self._judged then
    local first = self._judged
    self._judged = nt
    -- One guarded call for all new traces: the guard's setup is not per trace.
    local ok, err = guarded(self, true, function()
      local timeout = self._hook_timeout
      for idx = first, nt - 1 do
        -- The limit is per call: one slow trace does not time out the next ones.
        if timeout then guard_deadline = now() + timeout end
        local fine, verdict = xpcall(fn, debug.traceback, self:trace(idx + 1))
        -- A failing hook keeps the trace: losing data silently is worse than keeping it.
        if not fine then report_hook_error(self, "on_trace", verdict) end
        -- The hook may have polled or asked for a batch, which can move the arrays.
        local _, tv2 = self._s:verdicts()
        tv = ffi.cast(verdict_ptr, tv2)
        tv[idx] = (fine and verdict == false) and DROP or KEEP
      end
    end)
    if not ok then report_hook_error(self, "on_trace", err) end
  end
  -- An agent found late labels older entries: the filter may read the service.
  if f and relabelled ~= self._relabelled then
    self._relabelled, self._judged_entries = relabelled, 0
  end
  if f and ne > self._judged_entries then
    local e = ffi.cast(entry_ptr, entries)
    local match = f.match
    for i = self._judged_entries, ne - 1 do
      local x = e[i]
      scratch.pid, scratch.comm = x.pid, fstring(x.comm)
      scratch.service = x.service ~= nil and fstring(x.service) or nil
      scratch.frames = self:trace(x.trace + 1).frames
      ev[i] = match(scratch) and KEEP or DROP
    end
    scratch.frames = nil
    self._judged_entries = ne
  end
end

local EVENT_TYPES = { "exec", "exit", "fork", "sync" }

-- Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup, or its unified part on a
-- hybrid (v1 + v2) system.
local function cgroup_root()
  local f = io.open("/sys/fs/cgroup/cgroup.controllers")
  if f then f:close() return "/sys/fs/cgroup" end
  f = io.open("/sys/fs/cgroup/unified/cgroup.controllers")
  if f then f:close() return "/sys/fs/cgroup/unified" end
  return "/sys/fs/cgroup"
end
M.cgroup_root = cgroup_root

-- on_process (and the policy's listeners): the process events of the last poll.
local function deliver_events(self)
  local ptr, n = self._s:events()
  if n == 0 then return end
  local evs = ffi.cast(event_ptr, ptr)
  -- Copied out first: a hook may poll, which reuses the C queue.
  local list = {}
  for i = 0, n - 1 do
    local x = evs[i]
    list[i + 1] = { type = EVENT_TYPES[x.type] or "unknown", pid = x.pid, ppid = x.ppid,
                    comm = fstring(x.comm), ktime = tonumber(x.ktime) / 1e9,
                    exit_code = x.exit_code }
  end
  for _, ev in ipairs(list) do
    for _, l in ipairs(self._process_listeners) do l(ev) end
    if self._on_process then call_hook(self, "on_process", self._on_process, ev) end
  end
end

local function want_events(self)
  local want = self._on_process ~= nil or #self._process_listeners > 0
  if want ~= self._events_wanted then
    assert(self._s:want_events(want))
    self._events_wanted = want
  end
end

-- Keeps only what matches a filter expression (see lupe/filter.lua). What BPF can decide
-- (pids, comm globs, cgroup directories) is pushed into BPF maps, so other samples never
-- reach user space; the rest is decided once per entry. Raises on a syntax error.
function Session:filter(src)
  local f, err = require("lupe.filter").compile(src)
  if not f then error(err, 2) end
  self._filter, self._judged_entries = f, 0
  self:_push_filter(f)
  return self
end

-- The BPF part of a filter. A part that cannot be pushed (offline, a missing cgroup) is
-- left to the per-entry decision, which alone is always exact.
function Session:_push_filter(f)
  local b = f and f.bpf() or {}
  if self._offline or self._replay then return end
  if b.pids and self._target_desc == "system" then
    local ok, msg = self._s:target_pids(b.pids)
    if not ok then error("filter: " .. msg, 3) end
    self._filter_pids = true
  elseif self._filter_pids then
    self._s:target_system()
    self._filter_pids = nil
  end
  self._s:filter_comms(b.comms or {})
  local dirs = {}
  for i, d in ipairs(b.cgroups or {}) do dirs[i] = self._cgroup_root .. "/" .. d end
  if not self._s:filter_cgroups(dirs) then self._s:filter_cgroups({}) end
end

function Session:on_interval(seconds, fn)
  if type(seconds) ~= "number" or seconds <= 0 then error("on_interval: seconds must be > 0", 2) end
  if type(fn) ~= "function" then error("on_interval: expected a function", 2) end
  self._interval, self._on_interval = seconds, fn
  self._next_interval = self._s:clock() + seconds
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

-- fn(ev): ev.type = "exec" | "exit" | "fork" | "sync" (the session read the process's
-- mappings), ev.pid, ev.ppid, ev.comm, ev.ktime (seconds), ev.exit_code. Every exec and
-- exit of the machine is reported while a hook is set. fn = nil removes the hook.
function Session:on_process(fn)
  if fn ~= nil and type(fn) ~= "function" then error("on_process: expected a function", 2) end
  self._on_process = fn
  want_events(self)
  return self
end

-- For lupe.policy: a listener of process events that is not a user hook.
function Session:_listen_processes(fn)
  self._process_listeners[#self._process_listeners + 1] = fn
  want_events(self)
end

-- For lupe.policy: fn(now) after every poll.
function Session:_add_ticker(fn)
  self._tickers[#self._tickers + 1] = fn
end

function Session:stats()
  local st = self._s:stats()
  st.hook_errors = 0
  for _, n in pairs(self._hook_errors) do st.hook_errors = st.hook_errors + n end
  st.hook_errors_by_hook = {}
  for k, n in pairs(self._hook_errors) do st.hook_errors_by_hook[k] = n end
  st.processes = st.procmgr.processes
  st.truncated = st.kernel_trunc + st.user_trunc
  return st
end
function Session:set_frequency(hz) return self._s:set_frequency(hz) end
function Session:frequency() return self._s:frequency() end
function Session:pause() return self._s:pause() end
function Session:resume() return self._s:resume() end

-- The whole aggregate so far as a batch view (counts since the start).
function Session:batch()
  judge(self)
  return make_batch(self, false)
end

-- The profile so far: { entries = {...}, stats = {...}, duration = s, frequency = hz }.
-- Each entry: count, pid, comm, hash, frames (leaf first: name, module, addr, offset, kind).
function Session:profile()
  judge(self)
  local b = make_batch(self, false)
  local entries = b:tables()
  local stats = self:stats()
  stats.filtered_by_script = b.dropped
  return {
    entries = entries,
    stats = stats,
    duration = (self._stopped or self._s:clock_mark()) - self._started,
    frequency = self:frequency(),
    target = self._target_desc,
    exit_status = self.exit_status,
  }
end

-- Calls on_interval now with what was sampled since its last call, and starts a new
-- interval.
function Session:flush_interval()
  if not self._on_interval then return end
  judge(self)
  call_hook(self, "on_interval", self._on_interval, make_batch(self, true))
  self._s:interval_reset()
  self._next_interval = self._s:clock() + self._interval
end

-- Forgets the aggregate (entries, traces, verdicts, interval counts) and keeps the rest
-- (processes, symbols, counters, hooks, the filter): for a script that exports what it
-- needs as it goes, so that memory follows one export period's unique stacks rather than
-- the whole run's. Trace and entry indexes start again: drop what you keyed by them.
-- Call it between polls, e.g. at the end of on_interval.
function Session:reset()
  local ok, err = self._s:reset()
  if not ok then error("session: " .. tostring(err), 2) end
  self._traces = {}
  self._judged, self._judged_entries = 0, 0
end

-- The session's clock in seconds: the end of the last drain (a replay: as recorded).
function Session:clock() return self._s:clock() end

-- One round of the run loop: waits up to ms, drains, then runs what hooks are due.
-- Returns the number of records drained.
function Session:poll(ms)
  local n, msg = self._s:poll(ms or 0)
  if not n then error("session: " .. msg, 2) end
  local t = self._s:clock()
  if self._events_wanted then deliver_events(self) end
  if self._on_trace then judge(self) end
  for _, fn in ipairs(self._tickers) do fn(t) end
  if self._on_interval and t >= self._next_interval then self:flush_interval() end
  return n
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
  -- The session's clock, not the host's: a replay sees the recorded one.
  local started = self._s:clock_mark()
  local t = started
  self._stopped = nil
  if self._interval then self._next_interval = started + self._interval end
  while true do
    local wait = poll_ms
    if duration then wait = math.min(wait, math.max(0, (started + duration - t) * 1000)) end
    self:poll(floor(wait))
    t = self._s:clock()
    if native.interrupted() then break end
    if self._replay then
      -- The recorded run ended here, whatever ended it (duration, command, Ctrl-C...).
      local stopped, status = self._s:replay_stopped()
      if stopped then self.exit_status = status break end
    elseif opts.stop and opts.stop() then break end
    if duration and t - started >= duration then break end
    if self.command_pid then
      local done, status = self._s:command_done()
      if done then self.exit_status = status break end
    end
  end
  if not self._replay then self._s:mark_stop(self.exit_status) end
  -- One last drain: samples captured before the stop are not lost.
  self:poll(0)
  self._stopped = self._s:clock()
  local profile = self:profile()
  if self._on_end then call_hook(self, "on_end", self._on_end, profile) end
  return profile
end

-- For tests and replays of an offline session: one synthetic sample (user addresses
-- leaf first, optional kernel addresses) or process event.
function Session:inject(pid, comm, user, kernel, ktime)
  return self._s:inject(pid, comm, user, kernel, ktime and u64.to_c(ktime))
end
function Session:inject_event(kind, pid, ppid, comm)
  return self._s:inject_event(kind, pid, ppid, comm)
end

function Session:close()
  sessions[self._id] = nil
  self._s:close()
end

-- Hot reload (lupe/watch.lua): forgets every hook (every _on_* field, whoever added it),
-- the filter (and what it pushed into BPF), the verdicts and the policy's listeners, so that
-- a reloaded script starts clean on the same live session; samples, traces, counts and the
-- process table stay. Returns what was forgotten, for restore_hooks().
local reload_fields = { _interval = true, _next_interval = true, _filter = true,
                        _process_listeners = true, _tickers = true }
local function reset_verdicts(self)
  local ev, tv, ne, nt = self._s:verdicts()
  if ev then
    ffi.fill(ffi.cast(verdict_ptr, ev), ne)
    ffi.fill(ffi.cast(verdict_ptr, tv), nt)
  end
  self._judged, self._judged_entries = 0, 0
end
function Session:clear_hooks()
  local saved = {}
  for k, v in pairs(self) do
    if reload_fields[k] or (type(k) == "string" and k:match("^_on_")) then saved[k] = v end
  end
  for k in pairs(saved) do self[k] = nil end
  self._process_listeners, self._tickers = {}, {}
  reset_verdicts(self)
  self:_push_filter(nil)
  want_events(self)
  return saved
end

-- Puts back what clear_hooks() returned (a reloaded script failed half-way).
function Session:restore_hooks(saved)
  for k in pairs(reload_fields) do self[k] = nil end
  for k in pairs(self) do if type(k) == "string" and k:match("^_on_") then self[k] = nil end end
  for k, v in pairs(saved) do self[k] = v end
  self._process_listeners, self._tickers = self._process_listeners or {}, self._tickers or {}
  reset_verdicts(self)
  self:_push_filter(self._filter)
  want_events(self)
end

-- opts: frequency (Hz per CPU, default 99), kernel (default true), user (default true),
-- max_frames (user frames the native unwinder walks, default 128), target,
-- unwind (default true: native unwinding from .eh_frame; false: frame pointers),
-- filter_error_frames, on_hook_error ("continue", the default, or "stop"),
-- hook_timeout (seconds a hook may run, default 1; false: no limit), strict_hooks (true:
-- on_interval and on_end run with the JIT off too, so that the limit is airtight),
-- unwind_budget (bytes of BPF memory for stack-delta tables, default 64 MiB; tables that
-- do not fit are evicted or left out, counted in stats.deltas, and their frames walked by
-- frame pointers), offline (no BPF: samples come from s:inject, for tests),
-- raw (write a raw recording to this file), replay (run from a raw recording instead),
-- max_entries (default 16384: once a poll ends with that many (trace, pid, comm)
-- entries, those of exited processes are folded into one entry per (trace, comm) with
-- pid 0, counts added, so that a fork storm cannot grow the aggregate without bound;
-- counted in stats.folded_entries and stats.folds; a replay must use the same value).
-- Returns a session, or nil, message, errno.
function M.session(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("session: expected an options table", 2) end
  local timeout = opts.hook_timeout
  if timeout == nil then timeout = 1 end
  if timeout ~= false and (type(timeout) ~= "number" or timeout <= 0) then
    error("session: hook_timeout must be seconds > 0 or false", 2)
  end
  local run_options = package.loaded["lupe.run_options"]
  local replay = opts.replay or (type(run_options) == "table" and run_options.replay)
                 or os.getenv("LUPE_REPLAY")
  if replay == "" then replay = nil end
  local s, msg, errno = native.new{ frequency = opts.frequency, kernel = opts.kernel ~= false,
                                    filter_error_frames = opts.filter_error_frames,
                                    unwind = opts.unwind, user = opts.user,
                                    max_frames = opts.max_frames, offline = opts.offline,
                                    unwind_budget = opts.unwind_budget,
                                    max_entries = opts.max_entries,
                                    replay = replay }
  if not s then return nil, msg, errno end
  shared.next_id = shared.next_id + 1
  local self = setmetatable({ _s = s, _id = shared.next_id, _traces = {}, _started = s:clock(),
                              _hook_errors = {}, _judged = 0, _judged_entries = 0, _folds = 0,
                              _process_listeners = {}, _tickers = {},
                              _offline = opts.offline and true or false,
                              _replay = replay and true or nil,
                              _hook_timeout = timeout or nil,
                              _strict_hooks = opts.strict_hooks and true or nil,
                              _cgroup_root = opts.cgroup_root or cgroup_root(),
                              _stop_on_hook_error = opts.on_hook_error == "stop" }, Session)
  sessions[self._id] = self
  if replay then
    require("lupe.log").info("replaying %s: the target and the frequency come from the recording",
                             replay)
  elseif not opts.offline then
    if opts.raw then
      local ok, emsg, eno = s:record_raw(opts.raw)
      if not ok then s:close() sessions[self._id] = nil return nil, emsg, eno end
      -- Outputs name the target: a replay names the recorded one.
      s:note("target", require("lupe.output").describe_target(opts.target))
    end
    local ok, emsg, eno = apply_target(self, opts.target)
    if not ok then s:close() sessions[self._id] = nil return nil, emsg, eno end
  end
  self._target_desc = replay and s:replay_note("target") or opts.target or "system"
  self._started = s:clock()
  return self
end

return M
