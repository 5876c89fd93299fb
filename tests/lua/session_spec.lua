-- lupe.session without BPF: an offline session fed synthetic samples, seen through the
-- zero-copy batch views.
local lupe = require "lupe"
local ffi = require "ffi"

-- Samples as {pid, comm, user addresses}; unknown addresses make distinct traces.
local function feed(s, samples)
  for _, x in ipairs(samples) do assert(s:inject(x[1], x[2], x[3])) end
  s:poll(0)
end

local function offline(opts)
  opts = opts or {}
  opts.offline = true
  return assert(lupe.session(opts))
end

describe("lupe.session (offline)", function()
  local s
  before_each(function() s = offline() end)
  after_each(function() s:close() end)

  it("aggregates repeated samples into one entry per (trace, pid, comm)", function()
    feed(s, { { 10, "a", { 0x1000, 0x2000 } }, { 10, "a", { 0x1000, 0x2000 } },
              { 10, "b", { 0x1000, 0x2000 } }, { 11, "a", { 0x1000, 0x2000 } },
              { 10, "a", { 0x1001, 0x2000 } } })
    local b = s:batch()
    assert.are.equal(4, #b)
    assert.are.equal(5, b:total())
    -- Entries come in first-seen order.
    assert.are.same({ 10, "a", 2 }, { b:pid(1), b:comm(1), b:count(1) })
    assert.are.same({ 10, "b", 1 }, { b:pid(2), b:comm(2), b:count(2) })
    assert.are.same({ 11, "a", 1 }, { b:pid(3), b:comm(3), b:count(3) })
    -- Same addresses, same trace, whoever sampled them; the frame table is shared.
    assert.are.equal(b:trace(1), b:trace(3))
    assert.are.equal(b:frames(1), b:frames(3))
    assert.are_not.equal(b:trace(1), b:trace(4))
    assert.are.equal(2, #b:frames(4))
    assert.are.equal(32, #b:hash(1))
  end)

  it("hands out views of the C entries, not copies", function()
    feed(s, { { 10, "a", { 0x1000 } } })
    local b = s:batch()
    local e = b:entry(1)
    assert.are.equal("cdata", type(e))
    assert.are.equal(1, tonumber(e.count))
    assert.is_true(ffi.istype("const struct lupe_profile_entry &", e) or
                   ffi.istype("const struct lupe_profile_entry", e))
    assert.has_error(function() return b:count(2) end)
    assert.has_error(function() return b:count(0) end)
  end)

  it("gives on_interval only what was sampled since its last call", function()
    local got = {}
    s:on_interval(1000, function(b) got[#got + 1] = { n = #b, total = b:total() } end)
    feed(s, { { 10, "a", { 0x1000 } }, { 10, "a", { 0x1000 } }, { 10, "a", { 0x1001 } } })
    s:flush_interval()
    feed(s, { { 10, "a", { 0x1001 } } })
    s:flush_interval()
    s:flush_interval()
    assert.are.same({ { n = 2, total = 3 }, { n = 1, total = 1 }, { n = 0, total = 0 } }, got)
    -- The profile still has every count since the start.
    local p = s:profile()
    local n = 0
    for _, e in ipairs(p.entries) do n = n + e.count end
    assert.are.equal(4, n)
  end)

  it("iterates a batch of 100 000 entries from Lua", function()
    for i = 1, 100000 do assert(s:inject(1 + i % 50, "w", { 0x100000 + i })) end
    s:poll(0)
    local b = s:batch()
    assert.are.equal(100000, #b)
    local sum, e, idx = 0, b.e, b.idx
    for i = 0, b.n - 1 do sum = sum + tonumber(e[idx[i]].count) end
    assert.are.equal(100000, sum)
  end)

  it("applies a filter once per entry and counts what it drops", function()
    feed(s, { { 10, "nginx", { 0x1000 } }, { 10, "nginx", { 0x1000 } }, { 11, "app", { 0x1000 } },
              { 12, "ngx", { 0x1002 } } })
    s:filter("comm ~ 'ng*'")
    local b = s:batch()
    assert.are.equal(2, #b)
    assert.are.equal(3, b:total())
    assert.are.equal(1, b.dropped)
    -- A new filter replaces the verdicts.
    s:filter("pid == 11")
    b = s:batch()
    assert.are.equal(1, #b)
    assert.are.equal("app", b:comm(1))
    assert.are.equal(3, s:profile().stats.filtered_by_script)
  end)

  it("offers the stats scripts need", function()
    feed(s, { { 10, "a", { 0x1000 } } })
    local st = s:stats()
    for _, k in ipairs({ "samples", "lost", "filtered", "truncated", "hook_errors", "processes",
                         "bpf_map_bytes", "rate_skipped", "window_skipped", "unknown_frames" }) do
      assert.is_number(st[k], k)
    end
    assert.are.equal(1, st.samples)
    assert.are.equal(0, st.bpf_map_bytes) -- offline: no maps
  end)

  it("refuses bad options", function()
    assert.has_error(function() lupe.session{ offline = true, hook_timeout = -1 } end)
    assert.has_error(function() lupe.session{ offline = true, max_frames = 1000 } end)
    assert.has_error(function() s:on_interval(0, function() end) end)
    assert.has_error(function() s:on_process(42) end)
  end)
end)

describe("lupe.session folding (offline)", function()
  it("folds exited processes' entries and keeps the filter's verdicts with them", function()
    local s = offline{ max_entries = 5 }
    -- Pids above pid_max: nothing to read, the same addresses make one trace.
    local base = 4200000
    for pid = base + 10, base + 13 do
      for _ = 1, pid - base - 9 do assert(s:inject(pid, "w", { 0x1000, 0x2000 })) end
    end
    s:filter(("not pid == %d"):format(base + 11))
    s:poll(0)
    assert.are.equal(1 + 3 + 4, s:batch():total())   -- judged: base + 11 dropped
    for pid = base + 10, base + 13 do assert(s:inject_event("exit", pid, 1, "w")) end
    -- The fifth entry, which makes the poll fold: base + 11 again, a new process.
    assert(s:inject(base + 11, "w", { 0x1000, 0x2000 }))
    s:poll(0)
    local st = s:stats()
    assert.are.equal(1, st.folds)
    assert.are.equal(4, st.folded_entries)
    assert.are.equal(3, st.entries)        -- (trace, "w") kept and dropped, base + 11
    assert.is_number(st.aggregate_bytes)
    -- Entries made before the fold but not judged yet are judged, and later ones; the
    -- folded ones keep their verdicts (pid 0 alone would pass the filter).
    assert(s:inject(base + 14, "w", { 0x1000, 0x2000 }))
    s:poll(0)
    local b = s:batch()
    assert.are.equal(1 + 3 + 4 + 1, b:total())
    assert.are.equal(2 + 1, b.dropped)                     -- base + 11: before and now
    local pids = {}
    for i = 1, #b do pids[#pids + 1] = b:pid(i) end
    assert.are.same({ 0, base + 14 }, pids)
    s:close()
  end)
end)
