-- lupe.output.json (JSON Lines): each line parsed by tests/lua/output_decode.lua's strict
-- JSON reader and compared field by field with the profile it came from.
local jsonl = require "lupe.output.json"
local output = require "lupe.output"
local u64 = require "lupe.u64"
local decode = require "output_decode"

local function frame(kind, name, module, addr)
  return { kind = kind, name = name, module = module, addr = u64.of(addr or 0) }
end

local function profile()
  local main = frame("native", "main", "app", 0x1000)
  return {
    entries = {
      { count = 5, pid = 1, comm = "app", hash = ("a"):rep(32),
        frames = { frame("native", "work", "app", 0x1100), main } },
      { count = 2, pid = 2, comm = 'we"ird\n', hash = ("b"):rep(32),
        frames = { { kind = "kernel", name = "vfs_read", addr = u64.parse("0xffffffff81d33df7") },
                   frame("native", nil, "libfoo.so", 0x1139), main } },
      { count = 1, pid = 3, comm = "x", hash = ("c"):rep(32),
        frames = { { kind = "native", name = "f", module = "m", addr = u64.of(16),
                     file_id = ("0123456789abcdef"):rep(2) },
                   frame("error", "[truncated: user stack too deep]") } },
    },
    stats = { samples = 8, lost = 3, filtered = 4, kernel_trunc = 1, user_trunc = 1,
              unknown_frames = 2, ncpus = 2, symbolize_errors = 5 },
    duration = 1.25, frequency = 49, target = "system",
  }
end

local function lines(p)
  local buf = {}
  jsonl.write(p, { write = function(_, ...)
    for _, s in ipairs({ ... }) do buf[#buf + 1] = s end
  end })
  local text = table.concat(buf)
  assert.are.equal("\n", text:sub(-1))
  local out = {}
  for l in text:gmatch("([^\n]*)\n") do out[#out + 1] = decode.json(l) end
  return out
end

describe("lupe.output.json", function()
  it("is listed and found by name", function()
    assert.are.equal(jsonl, output.get("json"))
  end)

  it("starts with a header line carrying the session and every count", function()
    local h = lines(profile())[1]
    assert.are.equal("lupe-json", h.format)
    assert.are.equal(1, h.version)
    assert.are.equal("leaf-first", h.frames)
    assert.are.equal(49, h.frequency)
    assert.are.equal(1.25, h.duration)
    assert.are.equal("system", h.target)
    assert.are.equal(3, h.counts.lost)
    assert.are.equal(4, h.counts.filtered)
    assert.are.equal(2, h.counts.truncated)
    assert.are.equal(2, h.counts.unknown_frames)
    assert.are.equal(5, h.counts.symbolize_errors)
    assert.are.equal(0, h.counts.user_stack_err)
  end)

  it("writes one line per entry, frames leaf first", function()
    local l = lines(profile())
    assert.are.equal(4, #l)
    local e = l[2]
    assert.are.same({ "comm", "pid", "count", "hash", "frames" }, e.__keys)
    assert.are.equal("app", e.comm)
    assert.are.equal(1, e.pid)
    assert.are.equal(5, e.count)
    assert.are.equal(("a"):rep(32), e.hash)
    assert.are.equal(2, e.frames.n)
    assert.are.equal("work", e.frames[1]["function"])
    assert.are.equal("main", e.frames[2]["function"])
    assert.are.same({ "function", "module", "file_id", "address", "kind" }, e.frames[1].__keys)
    assert.are.equal("0x1100", e.frames[1].address)
    assert.are.equal(decode.null, e.frames[1].file_id)
  end)

  it("escapes names, keeps 64-bit addresses exact, writes null for what is unknown", function()
    local l = lines(profile())
    local e = l[3]
    assert.are.equal('we"ird\n', e.comm)
    local k = e.frames[1]
    assert.are.equal("vfs_read_[k]", k["function"])
    assert.are.equal(decode.null, k.module)
    assert.are.equal("0xffffffff81d33df7", k.address)
    assert.are.equal("kernel", k.kind)
    assert.are.equal("libfoo.so+0x1139", e.frames[2]["function"])
    assert.are.equal("libfoo.so", e.frames[2].module)
    local x = l[4]
    assert.are.equal(("0123456789abcdef"):rep(2), x.frames[1].file_id)
    assert.are.equal("0x10", x.frames[1].address)
    assert.are.equal("error", x.frames[2].kind)
    assert.are.equal("[truncated: user stack too deep]", x.frames[2]["function"])
  end)

  it("writes stacks deeper than unpack's limit", function()
    local deep = {}
    for i = 1, 10000 do deep[i] = frame("native", "f" .. i, "m", i) end
    local l = lines({ entries = { { count = 1, pid = 1, comm = "c", hash = ("d"):rep(32),
                                    frames = deep } }, stats = {}, duration = 0, frequency = 1 })
    assert.are.equal(10000, l[2].frames.n)
    assert.are.equal("f10000", l[2].frames[10000]["function"])
  end)

  it("adds the APM service name to entries that have one, and only to those", function()
    local p = profile()
    p.entries[2].service = 'shop "api"'
    local l = lines(p)
    assert.are.same({ "comm", "pid", "count", "hash", "frames" }, l[2].__keys)
    assert.are.same({ "comm", "pid", "count", "hash", "service", "frames" }, l[3].__keys)
    assert.are.equal('shop "api"', l[3].service)
  end)

  it("writes only the header for an empty profile", function()
    local l = lines({ entries = {}, stats = { lost = 1 }, duration = 0, frequency = 0 })
    assert.are.equal(1, #l)
    assert.are.equal(1, l[1].counts.lost)
  end)
end)
