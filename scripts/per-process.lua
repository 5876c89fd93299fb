-- break samples down by process and by cgroup (service, container)
--
-- Samples the whole system (or the given processes) for -d seconds and prints two tables:
-- samples per process (pid, comm, executable) and per cgroup v2 path, which is where
-- systemd services and containers show. A process's executable and cgroup are read from
-- /proc while it runs (on each one-second interval, once per new pid), so processes that
-- exit before the end keep theirs.
--
--   lupe per-process -d 10
--   lupe per-process -d 5 -n 40 --depth 2     cgroups cut to their first two levels
local lupe = require "lupe"
local ffi = require "ffi"
local args = require "lupe.args"

local USAGE = [=[
usage: lupe per-process [-F HZ] [-d SECONDS] [-n N] [--depth N] [-p PID,...]

Samples per process and per cgroup, largest first (default: 10 s, 30 lines each).
--depth N groups cgroups by their first N path components. With -p, sampling also ends
when every one of those processes has exited (they must exist at the start).
]=]

local o = args.cli({
  name = "per-process", usage = USAGE,
  { "-F", "--frequency", key = "frequency", kind = "frequency", default = 99 },
  { "-d", "--duration", key = "duration", kind = "number", min = 0.001, default = 10 },
  { "-n", "--lines", key = "lines", kind = "integer", min = 1, default = 30 },
  { nil, "--depth", key = "depth", kind = "integer", min = 1 },
  { "-p", "--pid", key = "pids", kind = "pids" },
}, arg)
local gone = args.check_pids(o.pids)
if gone then args.die("per-process", gone) end

pcall(ffi.cdef, "long readlink(const char *path, char *buf, size_t bufsiz);")
local buf = ffi.new("char[4096]")
local info = {}   -- pid -> { exe, cgroup }, read once while the process runs

local function read_info(pid)
  local n = ffi.C.readlink("/proc/" .. pid .. "/exe", buf, 4096)
  local exe = n > 0 and ffi.string(buf, n) or "?"
  local cg = "?"
  local f = io.open("/proc/" .. pid .. "/cgroup")
  if f then
    for line in f:lines() do
      local path = line:match("^0::(.*)$")
      if path then cg = path break end
    end
    f:close()
  end
  if o.depth then
    local parts = {}
    for c in cg:gmatch("[^/]+") do
      if #parts < o.depth then parts[#parts + 1] = c end
    end
    cg = "/" .. table.concat(parts, "/")
  end
  return { exe = exe, cgroup = cg }
end

local s, err = lupe.session{ frequency = o.frequency,
                             target = o.pids and { pids = o.pids } or "system" }
if not s then
  io.stderr:write("lupe per-process: ", tostring(err), "\n")
  return 1
end
s:on_interval(1.0, function(batch)
  for k = 1, #batch do
    local pid = batch:pid(k)
    if not info[pid] then info[pid] = read_info(pid) end
  end
end)
local p = s:run{ duration = o.duration, stop = args.until_gone(o.pids) }
s:close()

local procs, cgroups, total = {}, {}, 0
for _, e in ipairs(p.entries) do
  local inf = info[e.pid] or read_info(e.pid)
  local key = e.pid
  local pr = procs[key] or { pid = e.pid, comm = e.comm, exe = inf.exe, n = 0 }
  pr.n = pr.n + e.count
  procs[key] = pr
  cgroups[inf.cgroup] = (cgroups[inf.cgroup] or 0) + e.count
  total = total + e.count
end

local function sorted(t, key)
  local l = {}
  for k, v in pairs(t) do l[#l + 1] = key and v or { name = k, n = v } end
  table.sort(l, function(a, b) return a.n > b.n end)
  return l
end

local out = { ("%d samples in %.1f s at %d Hz (%d lost, %d filtered)\n\n"):format(total,
  p.duration, p.frequency, p.stats.lost, p.stats.filtered),
  "   share   samples      pid  comm             executable\n" }
for k, pr in ipairs(sorted(procs, true)) do
  if k > o.lines then break end
  out[#out + 1] = ("%7.2f%% %9d %8d  %-16s %s\n"):format(100 * pr.n / math.max(total, 1), pr.n,
    pr.pid, pr.comm, pr.exe)
end
out[#out + 1] = "\n   share   samples  cgroup\n"
for k, c in ipairs(sorted(cgroups)) do
  if k > o.lines then break end
  out[#out + 1] = ("%7.2f%% %9d  %s\n"):format(100 * c.n / math.max(total, 1), c.n, c.name)
end
io.stdout:write(table.concat(out))
return 0
