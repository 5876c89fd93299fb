-- `lupe run --watch SCRIPT`: runs SCRIPT and reloads it when the file changes (checked at
-- every poll of the run loop, 10 ms by default; a change must hold for two polls) or on
-- SIGHUP, without stopping the session.
--
-- The script runs in a coroutine. Its first lupe.session{...} creates the live session;
-- a reloaded script's lupe.session{...} returns that same session, with the new frequency
-- applied and hooks and filter cleared for the new script to set. s:run{...}
-- yields to the driver here, which runs the one real run loop; a reload runs the new script
-- up to its own s:run{...} and the loop goes on with the new hooks and the new run options
-- (duration still counts from the first run's start). When the loop ends, the newest
-- script resumes after its s:run{...} with the profile, as if it had run all along.
-- A script that fails to load or raises before its s:run{...} is reported and the old
-- hooks are put back. target, kernel and unwind stay as the first script set them.
local native = require "lupe.native"
local log = require "lupe.log"
local sessions = require "lupe.session"

local M = {}
local repl_native = native.repl
local now = sessions.now
local coroutine, unpack, type, tostring = coroutine, unpack, type, tostring

-- Resumes co; returns "run", opts (it called s:run) | "done", value | "error", message.
local function step(co, ...)
  local ok, what, opts = coroutine.resume(co, ...)
  if not ok then return "error", debug.traceback(co, tostring(what)) end
  if coroutine.status(co) == "dead" then return "done", what end
  if what == "run" then return "run", opts end
  return "error", "script yielded outside s:run (" .. tostring(what) .. ")"
end

-- A watcher for one script. Fields the tests and the driver read: reloads, failures.
local Watch = {}
Watch.__index = Watch

function M.new(path, args)
  return setmetatable({ path = path, args = args or {}, reloads = 0, failures = 0,
                        id = repl_native.file_id(path) }, Watch)
end

-- Loads and starts the script in a fresh coroutine, up to its s:run or its end.
function Watch:start_script()
  if self.root then
    local ok, why, errno = repl_native.check_trusted(self.path)
    if not ok then
      -- A missing script (ENOENT) is no trust problem: say so, as a plain run does.
      if errno == 2 then return "error", "cannot open script " .. why end
      return "error", "refusing to run as root: " .. why
    end
  end
  local fn, err = loadfile(self.path)
  if not fn then return "error", err end
  local co = coroutine.create(fn)
  local kind, v = step(co, unpack(self.args))
  return kind, v, co
end

-- A reload: the new script's hooks replace the old ones, or, if it fails, the old stay.
function Watch:reload(why)
  local live = self.live
  local saved = live and live:clear_hooks()
  local t0 = now()
  self.reloading = true
  local kind, v, co = self:start_script()
  self.reloading = false
  if kind == "error" then
    if live then live:restore_hooks(saved) end
    self.failures = self.failures + 1
    log.error("watch: %s: reload (%s) failed, the previous script keeps running: %s",
      self.path, why, v)
    return false
  end
  self.reloads = self.reloads + 1
  if kind == "run" then
    self.co, self.run_opts = co, v or {}
  else
    log.warn("watch: %s: the reloaded script ended without calling s:run{}; its hooks are " ..
      "in place and the run goes on", self.path)
  end
  log.warn("watch: %s: reloaded (%s) in %.1f ms", self.path, why, (now() - t0) * 1000)
  return true
end

-- Called at every poll of the run loop: reload on change or SIGHUP; then the newest run
-- options decide whether to stop.
function Watch:check()
  local hup = repl_native.sighup_take()
  local id = repl_native.file_id(self.path)
  -- A change counts once the file looks the same at two polls in a row: an editor that
  -- truncates and then writes is not caught half-way.
  local changed = id and id ~= self.id and id == self.seen
  self.seen = id
  if hup or changed then
    self.id = id or self.id
    self:reload(hup and "SIGHUP" or "file changed")
  end
  local o = self.run_opts
  if o.stop and o.stop() then return true end
  if o.duration and now() - self.run_started >= o.duration then return true end
  return false
end

-- lupe.session{...} while watching: the first script's first call creates the live
-- session (its other calls create as usual); a reloaded script's calls all return it.
function Watch:session(create, opts)
  local live = self.live
  if live and self.reloading then
    if opts and opts.frequency and opts.frequency ~= live:frequency() then
      local ok, msg = live:set_frequency(opts.frequency)
      if not ok then log.warn("watch: frequency %s: %s", tostring(opts.frequency), tostring(msg)) end
    end
    return live
  end
  local s, msg, errno = create(opts)
  if not s or live then return s, msg, errno end
  self.live = s
  -- s:run inside the script hands control to the driver (M.main).
  s.run = function(_, o) return coroutine.yield("run", o) end
  return s
end

-- The driver: returns the exit status (the newest script's returned integer, else 0; 1 if
-- the first load fails).
function M.main(argv)
  local path = argv[1]
  local args = { unpack(argv, 2) }
  local w = M.new(path, args)
  w.root = repl_native.euid() == 0
  local a = { [0] = path }
  for i, v in ipairs(args) do a[i] = v end
  _G.arg = a

  local create = sessions.session
  sessions.session = function(opts) return w:session(create, opts) end
  repl_native.sighup_install()

  local kind, v, co = w:start_script()
  if kind == "error" then
    log.error("%s", v)
    return 1
  end
  w.co = co
  while kind == "run" do
    if not w.live then
      log.error("watch: %s: s:run called on something other than a lupe.session", path)
      return 1
    end
    local real_run = getmetatable(w.live).__index.run
    w.run_opts, w.run_started = v or {}, now()
    local profile = real_run(w.live, { poll_ms = w.run_opts.poll_ms,
                                       stop = function() return w:check() end })
    kind, v = step(w.co, profile)
  end
  sessions.session = create
  if kind == "error" then
    log.error("%s", v)
    return 1
  end
  return type(v) == "number" and v or 0
end

return M
