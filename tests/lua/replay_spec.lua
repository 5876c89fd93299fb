-- Replay of a committed raw recording (tests/fixtures/replay, see its README): what a
-- script sees offline, without BPF or privileges, is what it saw live.
local h = require "helpers"
local lupe = require "lupe"
local folded = require "lupe.output.folded"

local FIXTURE = h.fixtures .. "/replay/hot.raw"

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function collect()
  local buf = {}
  return buf, { write = function(self, s) buf[#buf + 1] = s return self end }
end

describe("lupe.session{ replay = FILE }", function()
  it("gives the live profile: the folded output lupe record wrote live", function()
    local s = assert(lupe.session{ replay = FIXTURE, target = { pids = { 1 } }, frequency = 1 })
    local p = s:run{ duration = 1e9 }   -- the recording ends the run, not the duration
    s:close()
    local buf, sink = collect()
    folded.write(p, sink)
    assert.are.equal(slurp(h.fixtures .. "/replay/hot.folded"), table.concat(buf))
    -- The recorded session, not this call's options.
    assert.are.equal(299, p.frequency)
    assert.are.equal("command=./hot 400", p.target)
    assert.are.equal(0, p.exit_status)
  end)

  it("shows the script the recorded samples, symbols and counters", function()
    local s = assert(lupe.session{ replay = FIXTURE })
    local p = s:run{}
    s:close()
    local total, inner = 0, 0
    for _, e in ipairs(p.entries) do
      assert.are.equal("hot", e.comm)
      total = total + e.count
      local leaf_user
      for _, f in ipairs(e.frames) do
        if f.kind == "native" then leaf_user = leaf_user or f end
        if f.kind == "kernel" then assert.is_string(f.name) end
      end
      if leaf_user and leaf_user.name == "hot_inner" then
        inner = inner + e.count
        assert.are.equal("hot", leaf_user.module)
      end
    end
    assert.are.equal(p.stats.samples, total)
    assert.is_true(total > 0 and inner / total >= 0.9, ("%d of %d in hot_inner"):format(inner, total))
    -- BPF's counters as they were at the end of the live run.
    assert.is_true(p.stats.filtered > 0)
    assert.are.equal(2, p.stats.ncpus)
    assert.are.equal(0, p.stats.replay_errors)
    assert.is_true(p.duration > 0.3, "duration " .. p.duration)
  end)

  it("batches on_interval by the recorded clock: every sample exactly once", function()
    local s = assert(lupe.session{ replay = FIXTURE })
    local batches, sum = 0, 0
    s:on_interval(0.05, function(batch)
      batches = batches + 1
      for i = 1, #batch do sum = sum + batch:count(i) end
    end)
    local p = s:run{}
    s:close()
    -- The last drain after the final interval may hold samples no batch saw.
    local total = 0
    for _, e in ipairs(p.entries) do total = total + e.count end
    assert.is_true(batches >= 4, batches .. " batches in ~0.4 s of recording")
    assert.is_true(sum <= total and sum >= total - 5, ("%d of %d samples in batches"):format(sum, total))
  end)

  it("replays a cut recording up to the cut, counting the error", function()
    local data = slurp(FIXTURE)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(data:sub(1, #data - 100))
    f:close()
    local s = assert(lupe.session{ replay = path })
    local p = s:run{}
    s:close()
    os.remove(path)
    assert.are.equal(1, p.stats.replay_errors)
    assert.is_true(p.stats.samples > 0)
    -- Every output says so: its counts stop where the recording does.
    local output = require "lupe.output"
    assert.matches(" replay_errors=1 truncated=%d+$", output.counts_summary(p.stats))
    local buf, sink = collect()
    require("lupe.output.json").write(p, sink)
    assert.matches('"replay_errors":1,"truncated":%d+', table.concat(buf))
  end)

  it("refuses what is not a recording, saying why", function()
    local s, msg = lupe.session{ replay = h.fixtures .. "/replay/hot.folded" }
    assert.is_nil(s)
    assert.matches("cannot replay", msg)
    s, msg = lupe.session{ replay = "/nonexistent/x.raw" }
    assert.is_nil(s)
    assert.matches("No such file", msg)
  end)
end)
