-- Native unwinding end to end: programs built without frame pointers, profiled by
-- `lupe record`, must unwind from the hot leaf through every caller to main (or to the
-- thread's start_thread and clone3). The expected callers come from the sources
-- (tests/fixtures/src/unwind_*), addresses of stripped code from nm of the unstripped
-- twin. Needs root; SKIPs (visibly) without it.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check

local tmp, built
local RUN_MS = 2000
local GOOD = 0.99

local function build()
  if built ~= nil then return built end
  tmp = t.tmpdir()
  local src = t.fixtures .. "/src"
  local cmds = {
    ("gcc -O2 -g -fomit-frame-pointer -pthread -o %s/unwind_work %s/unwind_work.c"):format(tmp, src),
    ("g++ -O2 -g -fomit-frame-pointer -o %s/unwind_exc %s/unwind_exc.cpp"):format(tmp, src),
    ("cp %s/unwind_work %s/unwind_strip && strip %s/unwind_strip"):format(tmp, tmp, tmp),
  }
  t.build(cmds)
  built = true
  return built
end

local function needs_root()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  build()
end

-- lupe record ARGS into a folded file; returns rows, status, stderr.
local function record(args)
  return t.record(tmp .. "/out.folded", "-F 999 " .. args)
end

-- "level3(unsigned long) [clone .cold]" -> "level3": C++ names compare by their base.
local function base(name)
  return (name:gsub("%(.*$", ""))
end

local ROOTS = { _start = true, clone3 = true, __clone3 = true, clone = true }

-- Whether a row (root first) is complete: it starts at an outermost frame, and the
-- frames it has of one of the chains are that chain's first frames, in order, with none
-- missing (a sample in c05 must show main, chain_main, c01 .. c04 above it).
local function matches(row, chains, rename)
  local frames = {}
  for i = 2, #row.stack do
    local name = row.stack[i]
    if rename then name = rename(name) end
    frames[#frames + 1] = base(name)
  end
  if not ROOTS[frames[1]] then return false, "root " .. tostring(frames[1]) end
  for _, chain in ipairs(chains) do
    local set = {}
    for _, f in ipairs(chain) do set[f] = true end
    local seen = {}
    for _, f in ipairs(frames) do if set[f] then seen[#seen + 1] = f end end
    local ok = #seen >= 1 and seen[1] == chain[1]
    for i = 1, #seen do
      if seen[i] ~= chain[i] then ok = false break end
    end
    if ok then return true, seen end
  end
  return false, "no chain"
end

-- Checks the rows of comm: >= GOOD complete, >= 50% in the hot leaf (a name, or a set
-- of names); returns good, total, and the rows whose leaf is hot, for further checks.
local function judge(rows, comm, chains, leaf, rename)
  local leaves = type(leaf) == "table" and leaf or { [leaf] = true }
  local total, good, hot, bad = 0, 0, {}, {}
  for _, r in ipairs(rows) do
    if r.stack[1] == comm then
      total = total + r.count
      local ok = matches(r, chains, rename)
      if ok then good = good + r.count else bad[#bad + 1] = r end
      local last = r.stack[#r.stack]
      for i = #r.stack, 2, -1 do
        -- The leaf is the last user frame: kernel frames (interrupts) come after it.
        if not r.stack[i]:match("_%[k%]$") then last = r.stack[i] break end
      end
      if rename then last = rename(last) end
      if leaves[base(last)] then hot[#hot + 1] = r end
    end
  end
  table.sort(bad, function(a, b) return a.count > b.count end)
  local worst = {}
  for i = 1, math.min(3, #bad) do worst[#worst + 1] = bad[i].line:sub(1, 300) end
  check(total >= 1000, "only %d samples of %s", total, comm)
  check(good / total >= GOOD, "%d of %d samples of %s complete (want %.0f%%); worst:\n%s",
    good, total, comm, GOOD * 100, table.concat(worst, "\n"))
  local nhot = 0
  for _, r in ipairs(hot) do nhot = nhot + r.count end
  print(("    %s: %d of %d samples complete, %d in the hot function"):format(comm, good, total, nhot))
  check(nhot / total >= 0.5, "only %d of %d samples in the hot function", nhot, total)
  return good, total, hot
end

local function seq(...)
  return { ... }
end

local function chain_of(n)
  local c = { "main", "chain_main" }
  for i = 1, n do c[#c + 1] = ("c%02d"):format(i) end
  c[#c + 1] = "chain_hot"
  return c
end

t.case("the workloads really have no frame pointers", function()
  needs_root()
  local _, out = t.sh(("objdump -d --no-show-raw-insn %s/unwind_work | " ..
    "awk '/<c05>:/,/ret/' | grep -c 'push.*%%rbp'"):format(tmp))
  check(tonumber(out) == 0, "c05 sets up a frame pointer:\n%s", out)
end)

t.case("a 14-deep chain of calls unwinds to main", function()
  needs_root()
  local rows, status, err = record(("-- %s/unwind_work chain %d"):format(tmp, RUN_MS))
  check(status == 0, "record exited %s: %s", status, err)
  local _, _, hot = judge(rows, "unwind_work", { chain_of(12) }, "chain_hot")
  for _, r in ipairs(hot) do
    local ok, seen = matches(r, { chain_of(12) })
    check(ok and #seen == 15, "a chain_hot sample misses callers: %s", r.line)
  end
end)

t.case("a callback called from inside libc's qsort unwinds through libc to main", function()
  needs_root()
  local rows = record(("-- %s/unwind_work qsort %d"):format(tmp, RUN_MS))
  local _, _, hot = judge(rows, "unwind_work", { seq("main", "sort_main", "cmp_hot") }, "cmp_hot")
  for _, r in ipairs(hot) do
    -- Between sort_main and cmp_hot: qsort's own frames in libc.
    local s, c
    for i, f in ipairs(r.stack) do
      if f == "sort_main" then s = i elseif f == "cmp_hot" then c = i end
    end
    check(s and c and c - s >= 2, "no libc frame between sort_main and cmp_hot: %s", r.line)
  end
end)

t.case("recursion 100 deep: every frame, in order", function()
  needs_root()
  local chain = { "main", "rec_main" }
  for _ = 0, 100 do chain[#chain + 1] = "recurse" end
  chain[#chain + 1] = "rec_hot"
  local rows = record(("-- %s/unwind_work recurse %d 100"):format(tmp, RUN_MS))
  local _, _, hot = judge(rows, "unwind_work", { chain }, "rec_hot")
  for _, r in ipairs(hot) do
    local n = 0
    for _, f in ipairs(r.stack) do if f == "recurse" then n = n + 1 end end
    check(n == 101, "%d recurse frames, want 101: %s", n, r.line:sub(1, 200))
  end
end)

t.case("two threads, each with its own chain, unwind to start_thread and clone3", function()
  needs_root()
  local alpha = seq("start_thread", "alpha_entry", "alpha_a", "alpha_b", "alpha_hot")
  local beta = seq("start_thread", "beta_entry", "beta_a", "beta_hot")
  local rows = record(("-- %s/unwind_work threads %d"):format(tmp, RUN_MS))
  local chains = { alpha, beta, seq("main") }
  local _, total = judge(rows, "unwind_work", chains, { alpha_hot = true, beta_hot = true })
  local a, b = 0, 0
  for _, r in ipairs(rows) do
    local leaf = r.stack[#r.stack]
    if leaf == "alpha_hot" and r.stack[2] == "clone3" then a = a + r.count end
    if leaf == "beta_hot" and r.stack[2] == "clone3" then b = b + r.count end
  end
  check(a > total * 0.3 and b > total * 0.3, "alpha_hot %d, beta_hot %d of %d", a, b, total)
end)

t.case("a signal handler's stack goes through the signal frame back to main", function()
  needs_root()
  local chain = seq("main", "sig_main", "sig_wait", "sig_handler", "sig_hot")
  local rows = record(("-- %s/unwind_work signal %d"):format(tmp, RUN_MS))
  local _, _, hot = judge(rows, "unwind_work", { chain }, "sig_hot")
  for _, r in ipairs(hot) do
    -- The signal trampoline sits between the interrupted function and the handler.
    local w, h
    for i, f in ipairs(r.stack) do
      if f == "sig_wait" then w = i elseif f == "sig_handler" then h = i end
    end
    check(w and h and h - w == 2, "no trampoline frame between sig_wait and sig_handler: %s",
      r.line)
  end
end)

t.case("a C++ exception in flight: a destructor run by the unwinder, under its callers", function()
  needs_root()
  local chain = seq("main", "exc_main", "level1", "level2", "level3", "burn")
  local rows = record(("-- %s/unwind_exc %d"):format(tmp, RUN_MS))
  local _, _, hot = judge(rows, "unwind_exc", { chain }, "burn")
  local cold = 0
  for _, r in ipairs(hot) do
    for _, f in ipairs(r.stack) do if f:match("^level3.*%.cold") then cold = cold + r.count end end
  end
  -- GCC puts level3's landing pad in its .cold part: that is where burn was called from.
  check(cold > 0, "burn never called from level3's landing pad")
end)

-- nm of the unstripped twin: "unwind_strip+0x1234" -> the function covering 0x1234.
local function symbol_ranges(path)
  local syms = {}
  local p = assert(io.popen("nm -S --defined-only " .. path))
  for line in p:lines() do
    local a, s, ty, name = line:match("^(%x+) (%x+) (%a) (%S+)$")
    if a and (ty == "T" or ty == "t") then
      syms[#syms + 1] = { start = tonumber(a, 16), stop = tonumber(a, 16) + tonumber(s, 16), name = name }
    end
  end
  p:close()
  return syms
end

t.case("a stripped binary unwinds as well; its frames are module+offset", function()
  needs_root()
  local syms = symbol_ranges(tmp .. "/unwind_work")
  local function rename(name)
    local off = name:match("^unwind_strip%+0x(%x+)$")
    if not off then return name end
    off = tonumber(off, 16)
    for _, s in ipairs(syms) do
      if off >= s.start and off < s.stop then return s.name end
    end
    return name
  end
  local rows = record(("-- %s/unwind_strip chain %d"):format(tmp, RUN_MS))
  local named = 0
  for _, r in ipairs(rows) do
    for _, f in ipairs(r.stack) do if f == "chain_hot" or f == "c05" then named = named + 1 end end
  end
  check(named == 0, "a stripped binary still has names?")
  local _, _, hot = judge(rows, "unwind_strip", { chain_of(12) }, "chain_hot", rename)
  for _, r in ipairs(hot) do
    local ok, seen = matches(r, { chain_of(12) }, rename)
    check(ok and #seen == 15, "a chain_hot sample misses callers: %s", r.line)
  end
end)

t.case("--fp: frame pointers only, as before (the same chain breaks)", function()
  needs_root()
  local rows, status, err = record(("--fp -- %s/unwind_work chain %d"):format(tmp, 1000))
  check(status == 0, "record --fp exited %s: %s", status, err)
  local total, good = 0, 0
  for _, r in ipairs(rows) do
    if r.stack[1] == "unwind_work" then
      total = total + r.count
      if matches(r, { chain_of(12) }) then good = good + r.count end
    end
  end
  check(total >= 500, "only %d samples", total)
  print(("    --fp: %d of %d samples complete"):format(good, total))
  check(good / total < 0.5, "%d of %d complete without native unwinding?", good, total)
end)

local rc = t.run_all()
if tmp then os.execute("rm -rf " .. tmp) end
return rc
