-- lupe.output.speedscope: exact output for a hand-built profile (written out by hand from
-- speedscope's file format, src/lib/file-format-spec.ts), and a structural check of the
-- parsed document (tests/lua/output_decode.lua's strict JSON reader).
local speedscope = require "lupe.output.speedscope"
local output = require "lupe.output"
local u64 = require "lupe.u64"
local decode = require "output_decode"
local version = require("lupe.native").version

local function frame(kind, name, module, addr)
  return { kind = kind, name = name, module = module, addr = u64.of(addr or 0) }
end

-- pid 7 runs sh then execs app (named app/sh: app has more samples); pid 9 is heavier (9
-- samples against 5) and comes first.
local function profile()
  local main = frame("native", "main", "app", 0x1000)
  local work = frame("native", "work", "app", 0x1100)
  return {
    entries = {
      { count = 2, pid = 7, comm = "sh", frames = { main } },
      { count = 5, pid = 9, comm = "app", frames = { work, main } },
      { count = 3, pid = 7, comm = "app",
        frames = { { kind = "kernel", name = "do_exit", addr = u64.parse("0xffffffff81000010") },
                   frame("native", "main", "app", 0x1000) } },
      { count = 4, pid = 9, comm = "app",
        frames = { frame("native", nil, 'lib"q".so', 0x20), work, main } },
    },
    stats = { samples = 14, lost = 1, filtered = 2, kernel_trunc = 0, user_trunc = 3,
              unknown_frames = 0, ncpus = 4 },
    duration = 2, frequency = 100, target = { command = { "make", "-j2" } },
  }
end

local function write(p, opts)
  local buf = {}
  speedscope.write(p, { write = function(_, ...)
    for _, s in ipairs({ ... }) do buf[#buf + 1] = s end
  end }, opts)
  return table.concat(buf)
end

local COUNTS = '"samples":14,"lost":1,"filtered":2,"idle":0,"kernel_trunc":0,"user_trunc":3,' ..
  '"user_stack_err":0,"kernel_stack_err":0,"unknown_frames":0,"events_lost":0,' ..
  '"bpf_bad_records":0,"symbolize_errors":0,"truncated":3'

describe("lupe.output.speedscope", function()
  it("is listed and found by name", function()
    assert.are.equal(speedscope, output.get("speedscope"))
    local listed = false
    for _, n in ipairs(output.formats) do listed = listed or n == "speedscope" end
    assert.is_true(listed)
  end)

  it("writes the exact document: shared frames, one sampled profile per process", function()
    local want = '{"$schema":"https://www.speedscope.app/file-format-schema.json",' ..
      '"exporter":"lupe ' .. version .. '",' ..
      '"name":"lupe: samples=14 lost=1 filtered=2 idle=0 kernel_trunc=0 user_trunc=3 ' ..
      'user_stack_err=0 kernel_stack_err=0 unknown_frames=0 events_lost=0 bpf_bad_records=0 ' ..
      'symbolize_errors=0 truncated=3",' ..
      '"activeProfileIndex":0,' ..
      '"lupe":{"frequency":100,"duration":2.000,"ncpus":4,"target":"command=make -j2",' ..
      '"counts":{' .. COUNTS .. '}},' ..
      '"profiles":[' ..
      '{"type":"sampled","name":"app (9)","unit":"none","startValue":0,"endValue":9,' ..
      '"samples":[[1,0],[1,0,2]],"weights":[5,4]},' ..
      '{"type":"sampled","name":"app/sh (7)","unit":"none","startValue":0,"endValue":5,' ..
      '"samples":[[1],[1,3]],"weights":[2,3]}],' ..
      '"shared":{"frames":[{"name":"work","file":"app"},{"name":"main","file":"app"},' ..
      '{"name":"lib\\"q\\".so+0x20","file":"lib\\"q\\".so"},{"name":"do_exit_[k]"}]}}\n'
    assert.are.equal(want, write(profile()))
  end)

  it("names a process's profile with its APM service, only where known", function()
    local p = profile()
    p.entries[2].service = "shop"
    local doc = write(p)
    assert.truthy(doc:find('"name":"app (9) [service.name=shop]"', 1, true))
    assert.truthy(doc:find('"name":"app/sh (7)"', 1, true))
  end)

  it("weights CPU time in nanoseconds when asked", function()
    local doc = decode.json(write(profile(), { unit = "nanoseconds" }))
    local p = doc.profiles[1]
    assert.are.equal("nanoseconds", p.unit)
    assert.are.same({ 50000000, 40000000, n = 2 }, p.weights) -- 5 and 4 samples at 100 Hz
    assert.are.equal(90000000, p.endValue)
    assert.has_error(function() write(profile(), { unit = "bytes" }) end)
  end)

  it("parses as strict JSON with every required field of the format", function()
    local doc = decode.json(write(profile()))
    assert.are.equal("https://www.speedscope.app/file-format-schema.json", doc["$schema"])
    assert.are.equal("table", type(doc.shared.frames))
    local nframes = doc.shared.frames.n
    for i = 1, nframes do assert.are.equal("string", type(doc.shared.frames[i].name)) end
    assert.are.equal(2, doc.profiles.n)
    for i = 1, doc.profiles.n do
      local p = doc.profiles[i]
      assert.are.equal("sampled", p.type)
      assert.are.equal("string", type(p.name))
      assert.are.equal(p.samples.n, p.weights.n)
      local sum = 0
      for j = 1, p.samples.n do
        sum = sum + p.weights[j]
        for k = 1, p.samples[j].n do
          local idx = p.samples[j][k]
          assert.is_true(idx >= 0 and idx < nframes and idx % 1 == 0)
        end
      end
      assert.are.equal(sum, p.endValue)
    end
    assert.are.equal(1, doc.lupe.counts.lost)
  end)

  it("writes a valid document for an empty profile", function()
    local doc = decode.json(write({ entries = {}, stats = {}, duration = 0, frequency = 0 }))
    assert.are.equal(1, doc.profiles.n)
    assert.are.equal("no samples (0)", doc.profiles[1].name)
    assert.are.equal(0, doc.profiles[1].samples.n)
    assert.are.equal(0, doc.shared.frames.n)
    assert.are.equal(0, doc.lupe.counts.lost)
  end)
end)
