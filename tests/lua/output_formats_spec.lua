-- lupe.output as a whole: every listed format loads and writes something for empty and
-- small profiles; a format that fails to load says why; the shared helpers (counts,
-- frame ids) behave as the formats rely on.
local output = require "lupe.output"
local u64 = require "lupe.u64"

local function capture(mod, p)
  local buf = {}
  mod.write(p, { write = function(self, ...)
    for _, s in ipairs({ ... }) do buf[#buf + 1] = s end
    return self
  end }, {})
  return table.concat(buf)
end

local function small()
  return {
    entries = { { count = 3, pid = 10, comm = "c", hash = ("e"):rep(32),
                  frames = { { kind = "native", name = "leaf", module = "m", addr = u64.of(1) },
                             { kind = "native", name = "root", module = "m", addr = u64.of(2) } } } },
    stats = { samples = 3, lost = 0, filtered = 0, kernel_trunc = 0, user_trunc = 0,
              unknown_frames = 0 },
    duration = 1, frequency = 99,
  }
end

describe("lupe.output formats", function()
  it("lists the six formats, and each one writes empty and small profiles", function()
    assert.are.same({ "folded", "top", "pprof", "speedscope", "svg", "json" }, output.formats)
    for _, name in ipairs(output.formats) do
      local mod = assert(output.get(name), name)
      assert.are.equal("function", type(mod.write))
      capture(mod, { entries = {}, stats = small().stats, duration = 0, frequency = 0 })
      assert.is_true(#capture(mod, small()) > 0, name)
    end
  end)

  it("says why a format that exists fails to load", function()
    package.preload["lupe.output.broken"] = function() error("boom") end
    local m, err = output.get("broken")
    package.preload["lupe.output.broken"] = nil
    assert.is_nil(m)
    assert.matches("format 'broken' failed to load: .*boom", err)
  end)
end)

describe("lupe.output helpers", function()
  it("lists every count, missing ones as 0, and the truncated sum", function()
    local st = { samples = 5, lost = 1, kernel_trunc = 2, user_trunc = 3, symbolize_errors = 4 }
    local c = output.counts(st)
    assert.are.equal(#output.count_names, #c)
    assert.are.same({ "lost", 1 }, c[2])
    assert.are.same({ "filtered", 0 }, c[3])
    local s = output.counts_summary(st)
    assert.matches("^samples=5 lost=1 filtered=0 ", s)
    assert.matches(" symbolize_errors=4 truncated=5$", s)
    assert.matches('"truncated":5$', output.counts_json(st))
    assert.is_nil(output.counts_summary(st):find("replay_errors", 1, true))
    st.replay_errors = 2
    assert.matches(" symbolize_errors=4 replay_errors=2 truncated=5$", output.counts_summary(st))
  end)

  it("gives one id per distinct frame, whatever table carries it", function()
    local locate, frames = output.locator()
    local k1 = { kind = "kernel", name = "a", addr = u64.parse("0xffffffff81000000") }
    local k2 = { kind = "kernel", name = "a", addr = u64.parse("0xffffffff81000000") }
    local k3 = { kind = "kernel", name = "b", addr = u64.parse("0xffffffff81000001") }
    local n1 = { kind = "native", module = "x", addr = u64.of(0x1000) }
    local n2 = { kind = "native", module = "y", addr = u64.of(0x1000) }
    local big = { kind = "native", module = "x", addr = u64.parse("0x8000000000000000") }
    local e1 = { kind = "error", name = "[e1]", addr = u64.of(0) }
    local e2 = { kind = "error", name = "[e2]", addr = u64.of(0) }
    local u = { kind = "unknown", addr = u64.of(0) }
    local ids = {}
    for i, f in ipairs({ k1, k2, k3, n1, n2, big, e1, e2, u }) do ids[i] = (locate(f)) end
    assert.are.same({ 1, 1, 2, 3, 4, 5, 6, 7, 8 }, ids)
    local _, new = locate({ kind = "native", module = "x", addr = 0x1000 }) -- a plain number
    assert.is_false(new)
    assert.are.equal(k1, frames[1])
    -- Keys: exact below 2^53, negative distance for kernel addresses.
    assert.are.equal(0x1000, output.addr_key(u64.of(0x1000)))
    assert.are.equal(-(2 ^ 32), output.addr_key(u64.parse("0xffffffff00000000")))
    assert.are.equal("0x8000000000000000", output.addr_key(big.addr))
  end)

  it("describes targets in words", function()
    assert.are.equal("system", output.describe_target(nil))
    assert.are.equal("system", output.describe_target("system"))
    assert.are.equal("pids=1,2", output.describe_target({ pids = { 1, 2 } }))
    assert.are.equal("command=make -j2", output.describe_target({ command = { "make", "-j2" } }))
    assert.are.equal("cgroup=/sys/fs/cgroup/x", output.describe_target({ cgroup = "/sys/fs/cgroup/x" }))
  end)
end)
