-- lupe.output.pprof against a hand-built profile, decoded by tests/lua/output_decode.lua
-- (a protobuf reader written from profile.proto, not from the writer) after gunzip by
-- the gzip tool.
local pprof = require "lupe.output.pprof"
local output = require "lupe.output"
local u64 = require "lupe.u64"
local decode = require "output_decode"
local helpers = require "helpers"

local KADDR = "0xffffffff81d33df7"

local function frame(kind, name, module, addr)
  return { kind = kind, name = name, module = module, addr = u64.of(addr or 0) }
end

-- Two processes share a stack; main appears in three stacks as three distinct tables
-- with the same module and address (one location), a kernel frame has a 64-bit address.
local function profile()
  local work = frame("native", "work", "app", 0x1100)
  local read = { kind = "kernel", name = "vfs_read", addr = u64.parse(KADDR) }
  local anon = frame("native", nil, "libfoo.so", 0x1139)
  return {
    entries = {
      { count = 5, pid = 1, comm = "app", hash = ("a"):rep(32),
        frames = { work, frame("native", "main", "app", 0x1000) } },
      { count = 3, pid = 2, comm = "app", hash = ("a"):rep(32),
        frames = { work, frame("native", "main", "app", 0x1000) } },
      { count = 2, pid = 2, comm = "app", hash = ("b"):rep(32),
        frames = { read, anon, frame("native", "main", "app", 0x1000) } },
      { count = 1, pid = 3, comm = "x;y", hash = ("c"):rep(32),
        frames = { frame("unknown"), frame("error", "[truncated: user stack too deep]") } },
    },
    stats = { samples = 11, lost = 7, filtered = 4, kernel_trunc = 2, user_trunc = 1,
              unknown_frames = 1, user_stack_err = 3, kernel_stack_err = 0, ncpus = 2 },
    duration = 1.5, frequency = 99, target = { pids = { 1, 2, 3 } },
  }
end

-- Writes through lupe.output.get, gunzips with the gzip tool, decodes.
local function roundtrip(p, opts)
  local path = helpers.tmpname(".pb.gz")
  local f = assert(io.open(path, "wb"))
  assert.are.equal(pprof, output.get("pprof"))
  pprof.write(p, f, opts)
  f:close()
  local raw = helpers.slurp(path)
  local status, bytes = helpers.run("gzip -dc < " .. path)
  os.remove(path)
  assert.are.equal(0, status)
  return decode.pprof(bytes), raw, bytes
end

local function by_id(list)
  local t = {}
  for _, v in ipairs(list) do
    assert.is_nil(t[v.id], "duplicate id " .. tostring(v.id))
    assert.is_true(v.id ~= 0)
    t[v.id] = v
  end
  return t
end

describe("lupe.output.pprof", function()
  local p, raw, bytes
  setup(function() p, raw, bytes = roundtrip(profile()) end)

  it("is gzip (RFC 1952) and codec.gunzip agrees with the gzip tool", function()
    assert.are.equal("\31\139", raw:sub(1, 2))
    assert.are.equal(bytes, require("lupe.native").codec.gunzip(raw))
  end)

  it("has a string table starting with the empty string", function()
    assert.are.equal("", p.string_table[1])
    local seen = {}
    for _, s in ipairs(p.string_table) do
      assert.is_nil(seen[s], "string written twice: " .. s)
      seen[s] = true
    end
  end)

  it("declares samples/count and cpu/nanoseconds, period and duration", function()
    assert.are.same({ { type = "samples", unit = "count" }, { type = "cpu", unit = "nanoseconds" } },
                    p.sample_type)
    assert.are.same({ type = "cpu", unit = "nanoseconds" }, p.period_type)
    assert.are.equal(10101010, p.period) -- round(1e9 / 99)
    assert.are.equal(1500000000, p.duration_nanos)
    assert.is_nil(p.time_nanos)
  end)

  it("writes one sample per entry: leaf-first stacks, values, pid and comm labels", function()
    local locs, funcs = by_id(p.location), by_id(p["function"])
    local function names(s)
      local out = {}
      for i, id in ipairs(s.location_id) do
        local l = assert(locs[id], "no location " .. id)
        assert.are.equal(1, #l.line)
        out[i] = funcs[l.line[1].function_id].name
      end
      return out
    end
    local function labels(s)
      local t = {}
      for _, l in ipairs(s.label) do t[l.key] = l.num or l.str end
      return t
    end
    assert.are.equal(4, #p.sample)
    local want = {
      { { "work", "main" }, 5, 50505051, 1, "app" }, -- 5e9/99 = 50505050.5 -> 50505051
      { { "work", "main" }, 3, 30303030, 2, "app" },
      { { "vfs_read_[k]", "libfoo.so+0x1139", "main" }, 2, 20202020, 2, "app" },
      { { "[unknown]", "[truncated: user stack too deep]" }, 1, 10101010, 3, "x;y" },
    }
    for i, w in ipairs(want) do
      local s = p.sample[i]
      assert.are.same(w[1], names(s))
      assert.are.same({ w[2], w[3] }, s.value)
      assert.are.same({ pid = w[4], comm = w[5] }, labels(s))
    end
  end)

  it("labels samples with service.name where an APM agent named the service", function()
    local q = profile()
    q.entries[2].service = "shop-api"
    local d = roundtrip(q)
    local function labels(s)
      local t = {}
      for _, l in ipairs(s.label) do t[l.key] = l.num or l.str end
      return t
    end
    assert.are.same({ pid = 1, comm = "app" }, labels(d.sample[1]))
    assert.are.same({ pid = 2, comm = "app", ["service.name"] = "shop-api" }, labels(d.sample[2]))
  end)

  it("writes one location per distinct frame, with exact 64-bit addresses", function()
    assert.are.equal(6, #p.location) -- work, main, vfs_read, libfoo+0x1139, unknown, error
    local maps = by_id(p.mapping)
    local funcs = by_id(p["function"])
    local seen = {}
    for _, l in ipairs(p.location) do
      local f = funcs[l.line[1].function_id]
      seen[f.name] = { addr = l.address, map = l.mapping_id ~= 0 and maps[l.mapping_id].filename }
    end
    assert.are.equal(0x1100, seen.work.addr)
    assert.are.equal("app", seen.work.map)
    assert.are.equal(0x1000, seen.main.addr)
    assert.are.equal(0x1139, seen["libfoo.so+0x1139"].addr)
    assert.are.equal("libfoo.so", seen["libfoo.so+0x1139"].map)
    local k = seen["vfs_read_[k]"]
    assert.are.equal("cdata", type(k.addr))
    assert.is_true(k.addr == u64.parse(KADDR))
    assert.are.equal("[kernel]", k.map)
    assert.is_false(seen["[unknown]"].map)
    assert.is_false(seen["[truncated: user stack too deep]"].map)
  end)

  it("writes functions (name, system name, module) and one mapping per module", function()
    local fn = {}
    for _, f in ipairs(p["function"]) do fn[f.name] = f end
    assert.are.equal(6, #p["function"])
    assert.are.same({ id = fn.work.id, name = "work", system_name = "work", filename = "app",
                      start_line = 0 }, fn.work)
    assert.are.equal("", fn["vfs_read_[k]"].filename)
    local files = {}
    for _, m in ipairs(p.mapping) do
      files[#files + 1] = m.filename
      assert.are.equal(1, m.has_functions)
      assert.are.equal("", m.build_id)
    end
    table.sort(files)
    assert.are.same({ "[kernel]", "app", "libfoo.so" }, files)
  end)

  it("carries the session's counts in comments", function()
    local text = table.concat(p.comment, "\n")
    assert.matches("lost=7", text)
    assert.matches("filtered=4", text)
    assert.matches("truncated=3", text)
    assert.matches("kernel_trunc=2", text)
    assert.matches("user_stack_err=3", text)
    assert.matches("unknown_frames=1", text)
    assert.matches("frequency=99 Hz", text)
    assert.matches("target=pids=1,2,3", text)
  end)

  it("puts the heaviest executable's mapping first (pprof's main binary)", function()
    local q = { entries = {
      { count = 9, pid = 1, comm = "a", frames = { frame("kernel", "k", "[kernel]", 1),
        frame("native", "f", "/lib/libx.so.1", 2), frame("native", "h", "/usr/bin/helper", 3) } },
      { count = 4, pid = 1, comm = "a", frames = { frame("native", "g", "/usr/lib/liby.so", 4),
        frame("native", "main", "/usr/bin/app", 5) } },
      { count = 7, pid = 1, comm = "a", frames = { frame("native", "main", "/usr/bin/app", 5) } },
    }, stats = {}, duration = 1, frequency = 10 }
    local d = roundtrip(q)
    assert.are.equal("/usr/bin/app", d.mapping[1].filename) -- 11 samples against 9
    assert.are.equal(5, #d.mapping)
  end)

  it("writes an empty profile that still says what was lost", function()
    local e = roundtrip({ entries = {}, stats = { samples = 0, lost = 9, filtered = 0,
      kernel_trunc = 0, user_trunc = 0, unknown_frames = 0 }, duration = 0, frequency = 0 })
    assert.are.equal(0, #e.sample)
    assert.are.equal(0, #e.location)
    assert.are.equal(0, e.period)
    assert.matches("lost=9", table.concat(e.comment, "\n"))
  end)

  it("can write the bare protobuf", function()
    local path = helpers.tmpname(".pb")
    local f = assert(io.open(path, "wb"))
    pprof.write(profile(), f, { gzip = false })
    f:close()
    local b = helpers.slurp(path)
    os.remove(path)
    assert.are.equal(bytes, b)
  end)
end)
