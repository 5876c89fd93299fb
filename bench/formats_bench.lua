-- Output formats on a large synthetic profile: time and memory to write each one.
--   build/lupe run bench/formats_bench.lua [STACKS [DEPTH]]      (default 100000 30)
-- It runs itself once per format, a fresh process each (see measure()).
-- The profile: STACKS unique stacks of DEPTH frames, random walks on a call graph of 3,000
-- functions in 40 modules (each function at 4 call-site addresses; names: see names_of),
-- 1 in 5 stacks ending in 6 kernel frames (kernel addresses), 1 in 50 native frames
-- without a symbol, 300 processes of 25 commands, skewed counts. Frame tables are shared
-- between stacks here (a session's are not): no format may key anything on a frame
-- table's identity, so this changes memory, not the work. Each format writes to a real Lua
-- file, as lupe record gives it one, in /dev/shm (tmpfs: no disk; the file's size is the
-- output size; it is removed after), or without /dev/shm to /dev/null through a
-- byte-counting object (pprof compresses in memory first).
-- Figures: wall and CPU seconds of the write; "Lua heap +" is the growth of
-- collectgarbage("count") across it (what the format held or had not yet collected at its
-- end; the collector runs as usual); "peak RSS" is VmHWM after the write, reset before it
-- (/proc/self/clear_refs), so it includes the profile itself ("baseline RSS"); "+RSS" is
-- the difference: the format's own peak.
local ffi = require "ffi"
local u64 = require "lupe.u64"
local output = require "lupe.output"

ffi.cdef [[
struct lupe_bench_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct lupe_bench_timespec *ts);
long readlink(const char *path, char *buf, unsigned long size);
]]
local ts = ffi.new("struct lupe_bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local function status_kb(field)
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+) kB"))
end
local function reset_hwm()
  local f = io.open("/proc/self/clear_refs", "w")
  if not f then return false end
  local ok = f:write("5")
  f:close()
  return ok ~= nil
end

local NSTACKS = tonumber(arg and arg[1]) or 100000
local DEPTH = tonumber(arg and arg[2]) or 30
local NFUNCS, NMODS, SITES, NPROCS, NCOMMS = 3000, 40, 4, 300, 25

-- A deterministic generator (xorshift32): the same profile on every run.
local state = 2463534242
local bxor, lshift, rshift = bit.bxor, bit.lshift, bit.rshift
local function rand(n)
  state = bxor(state, lshift(state, 13))
  state = bxor(state, rshift(state, 17))
  state = bxor(state, lshift(state, 5))
  return (state % n + n) % n + 1
end

-- Function names as a mix of C and C++ code has them: half short C names (~16 bytes),
-- a third C++ methods (~35), the rest template instances (~95).
local VERBS = { "parse", "read", "write", "hash", "lookup", "insert", "flush", "encode",
                "decode", "scan", "merge", "sort", "alloc", "free", "send", "recv" }
local NOUNS = { "header", "buffer", "entry", "table", "node", "frame", "block", "page",
                "packet", "record", "index", "cache", "queue", "event", "token", "chunk" }
local function names_of(fn)
  local verb, noun = VERBS[fn % 16 + 1], NOUNS[math.floor(fn / 16) % 16 + 1]
  local r = fn % 20
  if r < 10 then return ("%s_%s_%d"):format(verb, noun, fn) end
  if r < 17 then
    return ("app::%s%d::%s_%s(unsigned long)"):format(noun:gsub("^%l", string.upper), fn % 97,
                                                      verb, noun)
  end
  return ("std::_Hashtable<std::string, std::pair<std::string const, app::%s%d>>::%s(std::" ..
          "string const&)"):format(noun, fn, verb)
end

local function build()
  local mods = {}
  for m = 1, NMODS do
    mods[m] = m == 1 and "/usr/bin/server" or ("/usr/lib/libm%02d.so.1"):format(m)
  end
  local user, callees = {}, {}
  for fn = 1, NFUNCS do
    local mod = mods[(fn % NMODS) + 1]
    local name = names_of(fn)
    local sites = {}
    for s = 1, SITES do
      local addr = 0x10000 + fn * 0x400 + s * 0x10
      sites[s] = { kind = "native", name = (fn % 50 ~= 0) and name or nil, module = mod,
                   addr = u64.of(addr), offset = u64.of(s * 0x10) }
    end
    user[fn] = sites
    local c = {}
    for k = 1, 6 do c[k] = rand(NFUNCS) end
    callees[fn] = c
  end
  local kernel = {}
  for k = 1, 400 do
    kernel[k] = { kind = "kernel", name = ("kfunc_%d"):format(k), module = "[kernel]",
                  addr = u64.parse(("0xffffffff81%06x"):format(k * 0x120)) }
  end
  local comms = {}
  for c = 1, NCOMMS do comms[c] = ("worker-%d"):format(c) end

  local entries, seen = {}, {}
  local key = {}
  while #entries < NSTACKS do
    local frames = {}
    local fn = rand(10)
    local nk = rand(5) == 1 and 6 or 0
    -- Root first in the walk; stored leaf first.
    for d = 1, DEPTH - nk do
      local site = rand(SITES)
      frames[DEPTH - d + 1] = user[fn][site]
      key[d] = fn * 8 + site
      fn = callees[fn][rand(6)]
    end
    for d = 1, nk do
      local k = rand(#kernel)
      frames[nk - d + 1] = kernel[k]
      key[DEPTH - nk + d] = -k
    end
    local pid = rand(NPROCS)
    local sk = table.concat(key, ",", 1, DEPTH) .. ":" .. pid
    if not seen[sk] then
      seen[sk] = true
      local r = rand(1000)
      entries[#entries + 1] = {
        count = r <= 900 and rand(3) or rand(200), pid = 1000 + pid,
        comm = comms[(pid % NCOMMS) + 1], hash = ("%032x"):format(#entries), frames = frames,
      }
    end
  end
  return {
    entries = entries,
    stats = { samples = 0, lost = 12, filtered = 3, idle = 0, kernel_trunc = 1, user_trunc = 2,
              user_stack_err = 0, kernel_stack_err = 0, unknown_frames = 0, ncpus = 2 },
    duration = 60, frequency = 99, target = "system",
  }
end

local t0 = now()
local profile = build()
local quiet = arg[3] ~= nil
local total = 0
for _, e in ipairs(profile.entries) do total = total + e.count end
profile.stats.samples = total
collectgarbage()
collectgarbage()
if not quiet then
  print(("profile: %d unique stacks x %d frames, %d samples; built in %.2f s; Lua heap " ..
         "%.1f MB, RSS %.1f MB"):format(#profile.entries, DEPTH, total, now() - t0,
         collectgarbage("count") / 1024, (status_kb("VmRSS") or 0) / 1024))
end

-- Counts bytes and passes them on to /dev/null, where /dev/shm is missing.
local devnull = assert(io.open("/dev/null", "wb"))
local sink = { bytes = 0 }
function sink:write(...)
  for i = 1, select("#", ...) do self.bytes = self.bytes + #select(i, ...) end
  devnull:write(...)
  return self
end

-- One format per process (argument 3): the Lua heap never shrinks back, so a format run
-- after another would find its memory already mapped and look cheaper than it is.
local function measure(name)
  local mod = assert(output.get(name))
  if not reset_hwm() then
    io.stderr:write("note: cannot reset VmHWM (/proc/self/clear_refs): peak RSS is the process's\n")
  end
  local base_rss = status_kb("VmRSS") or 0
  local path = ("/dev/shm/lupe-formats-bench-%s.out"):format(name)
  local fh = io.open(path, "wb") or sink
  local heap0 = collectgarbage("count")
  sink.bytes = 0
  local t, c = now(), os.clock()
  mod.write(profile, fh, {})
  if fh ~= sink then fh:flush() end
  local dt, dc = now() - t, os.clock() - c
  if fh ~= sink then
    sink.bytes = fh:seek("end")
    fh:close()
    os.remove(path)
  end
  local heap = collectgarbage("count") - heap0
  local hwm = status_kb("VmHWM") or 0
  return dt, dc, sink.bytes, heap / 1024, base_rss / 1024, hwm / 1024
end

local targets = { folded = 0.5, pprof = 1, speedscope = 1, svg = 1 }
local order = { "folded", "pprof", "speedscope", "svg", "json", "top" }

if arg[3] then
  print(("RESULT %s %.4f %.4f %d %.2f %.2f %.2f"):format(arg[3], measure(arg[3])))
  devnull:close()
  return 0
end

local exe do
  local buf = ffi.new("char[4096]")
  local n = ffi.C.readlink("/proc/self/exe", buf, 4096)
  exe = n > 0 and ffi.string(buf, n) or "build/lupe"
end
local script = arg[0]
print(("\n%-11s %7s %7s %9s %12s %12s %11s %7s  %s"):format("format", "wall s", "cpu s",
      "output MB", "Lua heap +MB", "baseline RSS", "peak RSS MB", "+RSS MB", "target"))
for _, name in ipairs(order) do
  local p = io.popen(("%s run %s %d %d %s"):format(exe, script, NSTACKS, DEPTH, name))
  local out = p:read("*a")
  p:close()
  local r = { out:match("RESULT %S+ (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)") }
  if #r == 0 then
    print(name .. ": failed\n" .. out)
  else
    for i = 1, #r do r[i] = tonumber(r[i]) end
    local dt, dc, bytes, heap, base, hwm = unpack(r)
    local target = targets[name]
    print(("%-11s %7.3f %7.3f %9.1f %12.1f %12.1f %11.1f %7.1f  %s"):format(name, dt, dc,
          bytes / 1e6, heap, base, hwm, hwm - base,
          target and ("<= %.1f s, <= 100 MB: %s"):format(target,
            (dt <= target and hwm - base <= 100) and "met" or "MISSED") or "-"))
  end
end
devnull:close()
