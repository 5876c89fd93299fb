-- a live top of the hottest functions, refreshed every second
--
-- Shows, every second, the functions where the CPUs spent the last second (self samples,
-- by leaf frame, as perf top does), their share, and the busiest processes. The samples
-- are read from the session's zero-copy batch views: no Lua table per sample or entry.
--
--   lupe top                       the whole system, 99 Hz, until Ctrl-C
--   lupe top -F 499 -n 30 -d 10    30 lines, 10 seconds
--   lupe top -p 1234 --filter "not kernel"
local lupe = require "lupe"
local label = require("lupe.output").label
local args = require "lupe.args"

local USAGE = [=[
usage: lupe top [-F HZ] [-d SECONDS] [-n N] [-p PID,...] [--filter EXPR] [--no-kernel]

Every second: the functions with the most samples in that second (self time), and the
busiest processes. Ctrl-C (or -d, or the end of every -p process) stops. Not a terminal:
one report per second, appended.

  -F, --frequency HZ     samples per second per CPU (default 99)
  -d, --duration SECS    stop after SECS seconds
  -n, --lines N          functions shown (default 20)
  -p, --pid PID[,PID...] only these processes (they must exist)
      --filter EXPR      keep the samples EXPR matches (see lupe.filter)
      --no-kernel        user stacks only
]=]

local o = args.cli({
  name = "top", usage = USAGE,
  { "-F", "--frequency", key = "frequency", kind = "frequency", default = 99 },
  { "-d", "--duration", key = "duration", kind = "number", min = 0.001 },
  { "-n", "--lines", key = "lines", kind = "integer", min = 1, default = 20 },
  { "-p", "--pid", key = "pids", kind = "pids" },
  { nil, "--filter", key = "filter", kind = "string" },
  { nil, "--no-kernel", key = "no_kernel", kind = "flag" },
}, arg)
local function die(msg) args.die("top", msg) end
local gone = args.check_pids(o.pids)
if gone then die(gone) end

local s, err = lupe.session{ frequency = o.frequency, kernel = not o.no_kernel,
                             target = o.pids and { pids = o.pids } or "system",
                             hook_timeout = false }
if not s then
  io.stderr:write("lupe top: ", tostring(err), "\n")
  return 1
end
if o.filter then
  local ok, ferr = pcall(s.filter, s, o.filter)
  if not ok then s:close() die(tostring(ferr)) end
end

local tty = os.getenv("TERM") ~= nil and os.execute("test -t 1") == 0
local leaf_label = {}   -- trace index -> the leaf's label, made once per unique trace

local function ranked(t, n)
  local list = {}
  for k, v in pairs(t) do list[#list + 1] = { k, v } end
  table.sort(list, function(a, b) if a[2] ~= b[2] then return a[2] > b[2] end return a[1] < b[1] end)
  for k = #list, n + 1, -1 do list[k] = nil end
  return list
end

s:on_interval(1.0, function(batch)
  local self_, procs, total = {}, {}, 0
  for k = 1, #batch do
    local c, tr = batch:count(k), batch:trace(k)
    local name = leaf_label[tr]
    if not name then
      local f = batch:frames(k)[1]
      name = f and label(f) or "[no frames]"
      leaf_label[tr] = name
    end
    self_[name] = (self_[name] or 0) + c
    local p = batch:pid(k) .. " " .. batch:comm(k)
    procs[p] = (procs[p] or 0) + c
    total = total + c
  end
  local st = s:stats()
  local out = {}
  if tty then out[1] = "\27[H\27[2J" end
  out[#out + 1] = ("lupe top: %d samples in the last second at %d Hz, %d lost, %d filtered, " ..
    "%d unique stacks, %d processes tracked\n\n"):format(total, s:frequency(), st.lost,
    st.filtered, st.traces, st.processes)
  out[#out + 1] = "  self%   samples  function\n"
  for _, r in ipairs(ranked(self_, o.lines)) do
    out[#out + 1] = ("%6.2f%% %9d  %s\n"):format(100 * r[2] / math.max(total, 1), r[2], r[1])
  end
  out[#out + 1] = "\n  share   samples  process\n"
  for _, r in ipairs(ranked(procs, 5)) do
    out[#out + 1] = ("%6.2f%% %9d  %s\n"):format(100 * r[2] / math.max(total, 1), r[2], r[1])
  end
  io.stdout:write(table.concat(out))
  io.stdout:flush()
end)

s:run{ duration = o.duration, stop = args.until_gone(o.pids) }
s:close()
return 0
