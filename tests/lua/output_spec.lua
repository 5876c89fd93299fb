local output = require "lupe.output"
local folded = require "lupe.output.folded"
local top = require "lupe.output.top"
local u64 = require "lupe.u64"

local function frame(kind, name, module, addr)
  return { kind = kind, name = name, module = module, addr = u64.of(addr or 0) }
end

-- Two processes with the same comm share a stack; a third differs.
local function profile()
  -- Distinct functions have distinct addresses (outputs identify frames by module and
  -- address).
  local main = frame("native", "main", "app", 0x1000)
  local work = frame("native", "work", "app", 0x2000)
  local read = frame("kernel", "vfs_read", "[kernel]", 0x3000)
  local anon = frame("native", nil, "libfoo.so", 0x1139)
  return {
    entries = {
      { count = 5, pid = 1, comm = "app", frames = { work, main } },
      { count = 3, pid = 2, comm = "app", frames = { work, main } },
      { count = 2, pid = 2, comm = "app", frames = { read, anon, main } },
      { count = 1, pid = 3, comm = "x;y",
        frames = { frame("unknown"), frame("error", "[truncated: user stack too deep]") } },
    },
    stats = { samples = 11, lost = 0, filtered = 4, kernel_trunc = 0, user_trunc = 1,
              unknown_frames = 1, ncpus = 2 },
    duration = 1.5, frequency = 99,
  }
end

describe("lupe.output", function()
  it("labels frames as flame graphs expect", function()
    assert.are.equal("vfs_read_[k]", output.label(frame("kernel", "vfs_read")))
    assert.are.equal("libfoo.so+0x1139", output.label(frame("native", nil, "libfoo.so", 0x1139)))
    assert.are.equal("[unknown]", output.label(frame("unknown")))
    assert.are.equal("0xffffffff81d33df7_[k]",
      output.label({ kind = "kernel", addr = u64.parse("0xffffffff81d33df7") }))
  end)

  it("finds formats by name and rejects unknown ones", function()
    assert.are.equal(folded, output.get("folded"))
    local m, err = output.get("nope")
    assert.is_nil(m)
    assert.matches("unknown format 'nope'", err)
    assert.is_nil((output.get("../etc")))
  end)
end)

describe("lupe.output.folded", function()
  it("writes root-first stacks, merged per comm, sorted", function()
    local lines = folded.lines(profile())
    assert.are.same({
      "app;main;libfoo.so+0x1139;vfs_read_[k] 2",
      "app;main;work 8",
      "x_y;[truncated: user stack too deep];[unknown] 1",
    }, lines)
  end)

  it("starts stacks with service:NAME only when asked, and keeps services apart", function()
    local p = profile()
    p.entries[1].service = "shop;api"
    assert.are.same(folded.lines(profile()), folded.lines(p))
    assert.are.same({
      "app;main;libfoo.so+0x1139;vfs_read_[k] 2",
      "app;main;work 3",
      "service:shop_api;app;main;work 5",
      "x_y;[truncated: user stack too deep];[unknown] 1",
    }, folded.lines(p, { service = true }))
    local buf = {}
    folded.write(p, { write = function(_, s) buf[#buf + 1] = s end }, { service = true })
    assert.matches("^service:shop_api;app;main;work 5\n", table.concat(buf))
  end)
end)

describe("lupe.output.top", function()
  it("ranks functions by self time and reports what was lost", function()
    local buf = {}
    top.write(profile(), { write = function(_, ...) for _, s in ipairs{ ... } do buf[#buf + 1] = s end end })
    local text = table.concat(buf)
    assert.matches("11 samples in 1%.5 s at 99 Hz on 2 CPUs", text)
    assert.matches("filtered=4", text)
    assert.matches("truncated=1", text)
    -- work is the hottest leaf: 8 of 11 samples.
    local first = text:match("function[^\n]*\n([^\n]*)")
    assert.matches("72%.73%%%s+72%.73%%%s+work%s+app", first)
    assert.matches("app %(1%)", text)
    assert.is_nil(text:find("service.name", 1, true))
  end)

  it("sums samples per APM service when agents named any", function()
    local p = profile()
    p.entries[1].service = "shop"
    p.entries[3].service = "shop"
    local buf = {}
    top.write(p, { write = function(_, ...) for _, s in ipairs{ ... } do buf[#buf + 1] = s end end })
    local text = table.concat(buf)
    -- 7 of 11 samples.
    assert.matches("service%.name\n%s*63%.64%%%s+shop\n", text)
  end)
end)
