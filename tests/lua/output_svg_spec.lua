-- lupe.output.svg: geometry of a small flame graph computed by hand (widths proportional
-- to samples, root at the bottom, siblings in name order), escaping, self-containment and
-- pruning. Interaction (zoom, search) is tested in Chromium: tests/integration/formats_test.lua.
local svg = require "lupe.output.svg"
local output = require "lupe.output"
local u64 = require "lupe.u64"
local helpers = require "helpers"

local function frame(kind, name, module, addr)
  return { kind = kind, name = name, module = module, addr = u64.of(addr or 0) }
end

local function profile()
  local main = frame("native", "main", "app")
  local work = frame("native", "work", "app", 0x10)
  local read = frame("kernel", "vfs_read", "[kernel]", 0x20)
  local anon = frame("native", nil, "libfoo.so", 0x1139)
  return {
    entries = {
      { count = 5, pid = 1, comm = "app", frames = { work, main } },
      { count = 3, pid = 2, comm = "app", frames = { work, main } },
      { count = 2, pid = 2, comm = "app", frames = { read, anon, main } },
      { count = 1, pid = 3, comm = "x;y",
        frames = { frame("unknown"), frame("error", "[truncated: user stack too deep]") } },
    },
    stats = { samples = 11, lost = 6, filtered = 4, kernel_trunc = 0, user_trunc = 1,
              unknown_frames = 1, ncpus = 2, kernel_stack_err = 2 },
    duration = 1.5, frequency = 99,
  }
end

local function render(p, opts)
  local buf = {}
  svg.write(p, { write = function(_, ...)
    for _, s in ipairs({ ... }) do buf[#buf + 1] = s end
  end }, opts)
  return table.concat(buf)
end

local function unxml(s)
  return (s:gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&quot;", '"'):gsub("&amp;", "&"))
end

-- The frames as drawn: name, samples, percentage, x, y, width (from the markup).
local function frames(doc)
  local list = {}
  local body = assert(doc:match('<g id="frames">(.*)</g>'))
  for title, rect in body:gmatch("<g><title>(.-)</title>(<rect.-/>)") do
    local name, samples, pct = title:match("^(.*) %((%d+) samples, ([%d.]+)%%%)$")
    list[#list + 1] = { name = unxml(name), samples = tonumber(samples), pct = tonumber(pct),
                        x = tonumber(rect:match(' x="([%d.]+)"')),
                        y = tonumber(rect:match(' y="([%d.]+)"')),
                        w = tonumber(rect:match(' width="([%d.]+)"')) }
  end
  return list
end

local function near(want, got, what)
  assert(math.abs(want - got) < 0.006, ("%s: want %.3f, got %.3f"):format(what, want, got))
end

describe("lupe.output.svg", function()
  it("is listed and found by name", function()
    assert.are.equal(svg, output.get("svg"))
  end)

  it("draws each merged frame with a width proportional to its samples", function()
    local doc = render(profile())
    local got = frames(doc)
    -- 1200 px wide, 10 px padding: 1180 px for 11 samples. Depth d is at y = 164 - 16 d
    -- (height 84 + 16 for the second line of counts + 5 levels x 16 + 30 = 210; the
    -- root's row starts 30 + 16 above the bottom).
    local px = 1180 / 11
    local want = {
      { "all", 11, 0, 0 },
      { "app", 10, 0, 1 },
      { "x;y", 1, 10, 1 },
      { "main", 10, 0, 2 },
      { "libfoo.so+0x1139", 2, 0, 3 }, -- before "work": siblings in name order
      { "work", 8, 2, 3 },
      { "vfs_read_[k]", 2, 0, 4 },
      { "[truncated: user stack too deep]", 1, 10, 2 },
      { "[unknown]", 1, 10, 3 },
    }
    assert.are.equal(#want, #got)
    local by_name = {}
    for _, f in ipairs(got) do by_name[f.name] = f end
    for _, w in ipairs(want) do
      local f = assert(by_name[w[1]], "missing frame " .. w[1])
      assert.are.equal(w[2], f.samples)
      near(100 * w[2] / 11, f.pct, w[1] .. " %")
      near(10 + w[3] * px, f.x, w[1] .. " x")
      near(w[2] * px, f.w, w[1] .. " width")
      assert.are.equal(164 - 16 * w[4], f.y, w[1] .. " y")
    end
    assert.matches('<svg[^>]* height="210"', doc)
    local _, lines = doc:match('<text id="counts".-</text>'):gsub("<tspan", "")
    assert.are.equal(2, lines)
  end)

  it("is self-contained: inline style and script, nothing fetched", function()
    local doc = render(profile())
    assert.matches("<style>", doc)
    assert.matches("<script><!%[CDATA%[", doc)
    assert.is_nil(doc:find("href", 1, true))
    assert.is_nil(doc:find("src=", 1, true))
    assert.is_nil(doc:find("@import", 1, true))
    local _, nurl = doc:gsub("url%(", "")
    local _, nlocal = doc:gsub("url%(#", "")
    assert.are.equal(nurl, nlocal)
    for link in doc:gmatch("https?://[^\"' ]+") do
      assert.are.equal("http://www.w3.org/2000/svg", link) -- the namespace name only
    end
  end)

  it("puts the session's counts in the title lines", function()
    local doc = render(profile(), { title = "T & <me>" })
    assert.matches('<text id="title"[^>]*>T &amp; &lt;me&gt;</text>', doc)
    local counts = assert(doc:match('<text id="counts"[^>]*>(.-)</text>'))
    assert.matches("lost=6", counts)
    assert.matches("filtered=4", counts)
    assert.matches("truncated=1", counts)
    assert.matches("kernel_stack_err=2", counts)
    assert.matches("unknown_frames=1", counts)
    assert.matches("11 samples at 99 Hz", doc)
  end)

  it("escapes markup, control characters and invalid UTF-8 in names", function()
    local p = { entries = { { count = 1, pid = 1, comm = "a<b>&\"c\1\255é",
                              frames = { frame("native", "operator<<(x&)", "m") } } },
                stats = {}, duration = 0, frequency = 1 }
    local doc = render(p)
    local names = {}
    for _, f in ipairs(frames(doc)) do names[f.name] = true end
    assert.is_true(names['a<b>&"c??é'])
    assert.is_true(names["operator<<(x&)"])
    assert.is_nil(doc:find("\1", 1, true))
    assert.is_nil(doc:find("\255", 1, true))
  end)

  it("leaves out frames narrower than minwidth and says how many", function()
    local p = profile()
    p.entries[1].count = 100000
    local doc = render(p)
    local names = {}
    for _, f in ipairs(frames(doc)) do names[#names + 1] = f.name end
    table.sort(names)
    -- 0.1 px is 0.1 x 100006 / 1180 = 8.5 samples: the 2- and 1-sample frames go (5 of
    -- them), their 100003-sample siblings stay.
    assert.are.same({ "all", "app", "main", "work" }, names)
    assert.matches("5 frames narrower than 0.1 px not drawn", doc)
    local all = frames(render(p, { minwidth = 0 }))
    assert.are.equal(9, #all)
  end)

  it("is well-formed XML (xmllint)", function()
    if helpers.run("command -v xmllint") ~= 0 then
      pending("xmllint is not installed (Debian libxml2-utils)")
      return
    end
    local path = helpers.tmpname(".svg")
    helpers.write(path, render(profile(), { title = "a & b" }))
    local status, _, err = helpers.run("xmllint --noout " .. path)
    os.remove(path)
    assert.are.equal(0, status, err)
  end)

  it("draws an empty profile as a root and a note", function()
    local doc = render({ entries = {}, stats = {}, duration = 0, frequency = 0 })
    local got = frames(doc)
    assert.are.equal(1, #got)
    assert.are.equal("all", got[1].name)
    assert.matches(">no samples<", doc)
  end)
end)
