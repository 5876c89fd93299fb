-- The Lua surface's costs: batches, hooks, the per-sample path with and without hooks,
-- and (as root) how fast a frequency change takes effect.
--   build/lupe run bench/lua_bench.lua [UNIQUE]          (default 100000)
-- Figures 1-4 use an offline session (no BPF, no privileges) fed synthetic samples of
-- this process: each stack is 12 return addresses inside 64 libc functions, chosen so
-- that UNIQUE stacks are distinct, so conversion and symbolization are real.
--  1. unique traces per second through on_interval and a folded writer (to /dev/null),
--     the C side (inject + drain: convert, symbolize) and the Lua side (the hook) apart;
--  2. iterating a batch of UNIQUE aggregated entries from Lua (count, pid, trace of each)
--     in an on_interval hook: unguarded (hook_timeout = false), guarded (the default), and
--     with strict_hooks (the JIT off: see lupe/session.lua);
--  3. on_trace per unique trace (including making the trace's frame table);
--  4. the per-sample cost of repeated stacks (cache hits), with no hook, and with a
--     filter, on_trace, on_interval and on_process defined; through s:inject, whose Lua C
--     call dominates both (bench/session_bench.c has the C path alone);
--  5. as root: 99 -> 999 Hz on a busy CPU; how long until the new rate shows, and whether
--     any sample was lost (lost, emitted vs aggregated).
local lupe = require "lupe"
local ffi = require "ffi"
local output = require "lupe.output"

ffi.cdef [[
struct lupe_lb_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct lupe_lb_timespec *ts);
int getpid(void);
void *dlsym(void *handle, const char *name);
]]
local tsp = ffi.new("struct lupe_lb_timespec")
local function now()
  ffi.C.clock_gettime(1, tsp)
  return tonumber(tsp.tv_sec) + tonumber(tsp.tv_nsec) / 1e9
end

local UNIQUE = tonumber(arg[1]) or 100000
local pid = ffi.C.getpid()

-- 64 libc functions' addresses (+16: inside them, as return addresses are).
local names = { "malloc", "free", "calloc", "realloc", "memcpy", "memset", "strlen", "strcmp",
  "printf", "fprintf", "sprintf", "snprintf", "fopen", "fclose", "fread", "fwrite", "read",
  "write", "open", "close", "qsort", "bsearch", "getenv", "setenv", "time", "localtime",
  "strftime", "strtol", "strtoul", "strtod", "atoi", "abs", "rand", "srand", "fflush", "fgets",
  "fputs", "puts", "putchar", "getchar", "memmove", "memcmp", "strchr", "strrchr", "strstr",
  "strncmp", "strncpy", "strcat", "strdup", "toupper", "tolower", "isalpha", "isdigit",
  "isspace", "exit", "atexit", "signal", "raise", "sleep", "usleep", "getpid", "kill",
  "pipe", "dup" }
local addrs, seen = {}, {}
for _, n in ipairs(names) do
  local p = ffi.C.dlsym(nil, n)
  local a = p ~= nil and tonumber(ffi.cast("uintptr_t", p)) + 16
  -- Aliases (memcpy and memmove may be one function) would make equal stacks.
  if a and not seen[a] then seen[a] = true addrs[#addrs + 1] = a end
end
local NA = #addrs

-- Stack k: 12 frames, digits of k in base NA pick the first ones (distinct per k).
local function stack(k)
  local st = {}
  for d = 1, 12 do
    st[d] = addrs[k % NA + 1]
    k = math.floor(k / NA)
  end
  return st
end

local function offline(opts)
  opts = opts or {}
  opts.offline = true
  return assert(lupe.session(opts))
end

local function fmt(n) return ("%.0f"):format(n) end

-- 1 + 2 + 3 ----------------------------------------------------------------------------
local stacks = {}
for k = 1, UNIQUE do stacks[k] = stack(k) end

local function feed(s)
  local t0 = now()
  for k = 1, UNIQUE do assert(s:inject(pid, "bench", stacks[k])) end
  s:poll(0)
  return now() - t0
end

do
  local s = offline{ hook_timeout = false }
  local label = output.label
  local lines, bytes = 0, 0
  local devnull = assert(io.open("/dev/null", "w"))
  local hook_s
  local line_of = {}  -- trace -> folded line prefix, once per unique trace
  s:on_interval(1e9, function(b)
    local t0 = now()
    for i = 1, #b do
      local tr = b:trace(i)
      local l = line_of[tr]
      if not l then
        local fr, parts = b:frames(i), { b:comm(i) }
        for j = #fr, 1, -1 do parts[#parts + 1] = label(fr[j]) end
        l = table.concat(parts, ";")
        line_of[tr] = l
      end
      local line = l .. " " .. b:count(i) .. "\n"
      devnull:write(line)
      lines, bytes = lines + 1, bytes + #line
    end
    hook_s = now() - t0
  end)
  local c_s = feed(s)
  s:flush_interval()
  devnull:close()
  print(("1. %d unique traces: inject + drain (convert, symbolize) %.3f s = %s traces/s; " ..
    "on_interval + folded writer %.3f s = %s traces/s (%d lines, %d bytes)"):format(UNIQUE,
    c_s, fmt(UNIQUE / c_s), hook_s, fmt(UNIQUE / hook_s), lines, bytes))

  -- 2: the same aggregate, iterated inside a hook, as a script's on_interval would.
  local function iterate(bt)
    local n, pids, tr = 0, 0, 0
    for i = 1, #bt do
      n = n + bt:count(i)
      pids = pids + bt:pid(i)
      tr = tr + bt:trace(i)
    end
    return n, pids, tr
  end
  for _, guard in ipairs({ false, 1, "strict" }) do
    -- A long limit for the strict run: it is slow, and must not be cut short.
    s._hook_timeout = guard and (guard == "strict" and 60 or 1) or nil
    s._strict_hooks = guard == "strict" or nil
    local best, entries = math.huge, 0
    for _ = 1, 5 do
      s._on_interval = function()
        local bt = s:batch()   -- the whole aggregate
        local t0 = now()
        assert(iterate(bt) == UNIQUE)
        best = math.min(best, now() - t0)
        entries = #bt
      end
      s:flush_interval()
    end
    print(("2. batch of %d entries iterated in a hook (count, pid, trace): %.2f ms, " ..
      "%.1f ns/entry (%s)"):format(entries, best * 1e3, best / entries * 1e9,
      guard == "strict" and "strict_hooks: JIT off" or guard and "hook_timeout = 1, the default"
      or "hook_timeout = false"))
  end
  s:close()
end

do
  local s = offline{ hook_timeout = false }
  local calls = 0
  s:on_trace(function(t) calls = calls + 1 return #t.frames > 0 end)
  for k = 1, UNIQUE do assert(s:inject(pid, "bench", stacks[k])) end
  s._s:poll(0)
  local t0 = now()
  s:poll(0) -- judges every new trace
  local took = now() - t0
  print(("3. on_trace: %d calls in %.3f s = %.2f us per unique trace (frame table included)")
    :format(calls, took, took / calls * 1e6))
  s:close()
end

-- 4 -----------------------------------------------------------------------------------
local REPEAT, DISTINCT, ROUND = 1000000, 1000, 10000
local function per_sample(with_hooks)
  local s = offline{ hook_timeout = false }
  for k = 1, DISTINCT do assert(s:inject(pid, "bench", stacks[k])) end
  if with_hooks then
    s:filter("comm ~ 'ben*' and not frame == 'nothing'")
    s:on_trace(function() return true end)
    s:on_interval(1e9, function() end)
    s:on_process(function() end)
  end
  s:poll(0)
  local inject = s._s.inject
  local ss = s._s
  local t0 = now()
  for r = 0, REPEAT / ROUND - 1 do
    for k = 1, ROUND do inject(ss, pid, "bench", stacks[(r * ROUND + k) % DISTINCT + 1]) end
    s:poll(0)
  end
  local took = now() - t0
  s:close()
  return took / REPEAT * 1e9
end
local a, b = per_sample(false), per_sample(true)
local a2, b2 = per_sample(false), per_sample(true)
print(("4. repeated stacks, per sample (s:inject + a drain every %d): no hooks %.0f / %.0f ns, " ..
  "filter + on_trace + on_interval + on_process %.0f / %.0f ns (two runs each)"):format(ROUND, a, a2, b, b2))

-- 5 -----------------------------------------------------------------------------------
local s = lupe.session{ frequency = 99, target = { pids = {} } }
if not s then
  print("5. frequency change: skipped (needs root to load BPF programs)")
  return 0
end
local spin = io.popen("luajit -e 'local t = os.time() while os.time() - t < 5 do end' " ..
  ">/dev/null 2>&1 & echo $!")
local spid = tonumber(spin:read("*l"))
spin:close()
assert(s._s:target_pids({ spid }))
s:run{ duration = 0.5 }
local before = s:stats().samples_seen
local t_change = now()
assert(s:set_frequency(999))
local ncpu = s:stats().ncpus
local want = 999 * ncpu * 0.005 * 0.5   -- half the new rate, per 5 ms
local latency
local last = before
while now() - t_change < 1 do
  s._s:poll(5)
  local nseen = s:stats().samples_seen
  if not latency and nseen - last >= want then latency = now() - t_change end
  last = nseen
end
local st = s:stats()
s:close()
os.execute("kill " .. spid .. " 2>/dev/null")
print(("5. 99 -> 999 Hz: the new rate showed after <= %.0f ms (5 ms polls); lost %d, " ..
  "emitted %d, aggregated %d"):format((latency or -1) * 1e3, st.lost, st.emitted, st.samples))
return 0
