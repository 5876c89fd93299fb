-- lupe.output.svg: geometry of a small flame graph computed by hand (widths proportional
-- to samples, root at the bottom, siblings in name order), escaping, self-containment and
-- pruning; random profiles against a tree built the simple way (oracle(): every frame's
-- text, order and the pruned count), numbers against string.format, Lua file against
-- :write object. Interaction (zoom, search) is tested in Chromium:
-- tests/integration/formats_test.lua.
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

-- The frames as written, in file order, their numbers as text.
local function raw_frames(doc)
  local list = {}
  local body = assert(doc:match('<g id="frames">(.*)</g>'))
  for title, rect in body:gmatch("<g><title>(.-)</title>(<rect.-/>)") do
    local name, samples, pct = title:match("^(.*) %((%d+) samples, ([%d.]+)%%%)$")
    list[#list + 1] = { name = unxml(name), samples = tonumber(samples), pct = pct,
                        x = rect:match(' x="([^"]*)"'), y = tonumber(rect:match(' y="([^"]*)"')),
                        w = rect:match(' width="([^"]*)"') }
  end
  return list
end

-- The flame graph the simple way, for comparison: a tree of tables keyed by name, each
-- stack added along its path; kept if minwidth / scale samples wide; siblings laid out in
-- name order and listed in the order their names were first seen (comm, then frames
-- leaf first), children before their parent. Returns the frames as raw_frames() reads
-- them ("%.2f" by string.format) and how many were left out. doc: the file, for the
-- number of lines the counts take above the graph.
local function oracle(p, opts, doc)
  local W, PAD, FH = opts.width or 1200, 10, 16
  local seen, nseen = {}, 0
  local function see(name)
    if not seen[name] then nseen = nseen + 1 seen[name] = nseen end
    return name
  end
  local root, total, deepest = { kids = {}, w = 0 }, 0, 0
  for _, e in ipairs(p.entries) do
    local path = { see(e.comm ~= "" and e.comm or "[unknown]") }
    for i = 1, #e.frames do path[#e.frames - i + 2] = see(output.label(e.frames[i])) end
    local node = root
    root.w = root.w + e.count
    for _, name in ipairs(path) do
      local kid = node.kids[name]
      if not kid then kid = { name = name, kids = {}, w = 0 } node.kids[name] = kid end
      kid.w = kid.w + e.count
      node = kid
    end
    total = total + e.count
    deepest = math.max(deepest, #path)
  end
  local scale = total > 0 and (W - 2 * PAD) / total or 0
  local min = total > 0 and (opts.minwidth or 0.1) / scale or 0
  local _, count_lines = doc:match('<text id="counts".-</text>'):gsub("<tspan", "")
  local base = 84 + 16 * (count_lines - 1) + deepest * FH -- H - 30 - FH
  local list, pruned = {}, 0
  local function count(node)
    local c = 1
    for _, kid in pairs(node.kids) do c = c + count(kid) end
    return c
  end
  local function walk(node, depth, x)
    local kept = {}
    for _, kid in pairs(node.kids) do
      if kid.w >= min then kept[#kept + 1] = kid else pruned = pruned + count(kid) end
    end
    table.sort(kept, function(a, b) return a.name < b.name end)
    for _, kid in ipairs(kept) do kid.x = x x = x + kid.w end
    table.sort(kept, function(a, b) return seen[a.name] < seen[b.name] end)
    for _, kid in ipairs(kept) do
      walk(kid, depth + 1, kid.x)
      list[#list + 1] = { name = kid.name, samples = kid.w,
                          pct = ("%.2f"):format(kid.w * (100 / total)),
                          x = ("%.2f"):format(PAD + kid.x * scale), y = base - (depth + 1) * FH,
                          w = ("%.2f"):format(kid.w * scale) }
    end
  end
  walk(root, 0, 0)
  table.insert(list, 1, { name = "all", samples = total,
                          pct = ("%.2f"):format(total * (total > 0 and 100 / total or 0)),
                          x = ("%.2f"):format(PAD), y = base, w = ("%.2f"):format(total * scale) })
  return list, pruned
end

-- A random profile (fixed seed): names from small pools so that stacks merge, some
-- without a symbol, kernel frames at the top of the address space, entries that share a
-- trace (hash and frames), counts skewed so that narrow frames are left out.
local function random_profile(nentries, seed)
  math.randomseed(seed)
  local pool = {}
  for i = 1, 60 do
    pool[i] = frame("native", i % 13 ~= 0 and ("fn_%d<&>"):format(i % 40) or nil,
                    "/lib/m" .. i % 3 .. ".so", 0x1000 + i * 16)
  end
  for i = 61, 70 do
    pool[i] = { kind = "kernel", name = "k" .. i, module = "[kernel]",
                addr = u64.parse(("0xffffffff8100%04x"):format(i)) }
  end
  local entries, traces = {}, {}
  for i = 1, nentries do
    local t
    if i > 10 and math.random(4) == 1 then
      t = traces[math.random(#traces)]
    else
      local fs = {}
      for d = 1, math.random(0, 9) do
        fs[d] = pool[d <= 2 and math.random(61, 70) or math.random(1, 60)]
      end
      t = { frames = fs, hash = ("%032x"):format(#traces) }
      traces[#traces + 1] = t
    end
    entries[i] = { count = math.random(10) == 1 and math.random(500) or math.random(3),
                   pid = i, comm = ({ "a", "b", "", "c d" })[math.random(4)],
                   hash = t.hash, frames = t.frames }
  end
  return { entries = entries, stats = {}, duration = 1, frequency = 99 }
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

  it("draws the same frames as a tree built the simple way, in the same order", function()
    for seed = 1, 4 do
      local p = random_profile(3000, seed)
      for _, opts in ipairs({ {}, { minwidth = 0 }, { minwidth = 3, width = 700 } }) do
        local doc = render(p, opts)
        local want, pruned = oracle(p, opts, doc)
        local got = raw_frames(doc)
        assert.are.equal(#want, #got)
        for i = 1, #want do assert.are.same(want[i], got[i]) end
        assert.matches(("; %d frames narrower than"):format(pruned), doc)
        if opts.minwidth ~= 0 then assert.is_true(pruned > 0) end
      end
    end
  end)

  it("writes string.format's %.2f digits where a coordinate falls on a half", function()
    -- 1180 px for 9440 samples: 1/8 px per sample, x at .125, .375...: halves of the last
    -- digit, which string.format rounds up (LuaJIT's own formatting) and C's printf to even.
    local main, other = frame("native", "main", "app", 1), frame("native", "other", "app", 2)
    local p = { entries = {}, stats = {}, duration = 1, frequency = 1 }
    for i = 1, 58 do
      p.entries[i] = { count = i % 2 == 0 and 159 or 161, comm = "p" .. i,
                       frames = { i % 2 == 0 and main or other } }
    end
    for i, comm in ipairs({ "p0", "p00", "p000", "p0000", "p00000" }) do
      p.entries[58 + i] = { count = i < 5 and 1 or 156, comm = comm, frames = {} }
    end
    local doc = render(p, { minwidth = 0 })
    local got, want = raw_frames(doc), oracle(p, { minwidth = 0 }, doc)
    assert.are.equal(#want, #got)
    local halves = 0
    for i = 1, #want do
      assert.are.same(want[i], got[i])
      -- x = 10 + k / 8 px, written rounded: an odd k is a half.
      if math.floor((tonumber(got[i].x) - 10) * 8 + 0.5) % 2 == 1 then halves = halves + 1 end
    end
    assert.is_true(halves >= 4, "only " .. halves .. " x on a half")
  end)

  it("writes the same bytes to a Lua file (through its FILE *) as to an object", function()
    local p = random_profile(500, 7)
    -- A name longer than the 64 KiB buffer goes out whole.
    local long = string.rep("std::map<int, x> ", 5000)
    p.entries[#p.entries + 1] = { count = 9999, comm = "long", frames = { frame("native", long, "m", 1) } }
    local path = helpers.tmpname(".svg")
    local fh = assert(io.open(path, "wb"))
    svg.write(p, fh, { minwidth = 0 })
    fh:close()
    local doc = render(p, { minwidth = 0 })
    assert.are.equal(doc, helpers.slurp(path))
    os.remove(path)
    assert.truthy(doc:find("<title>" .. svg.xml(long) .. " (9999 samples", 1, true))
  end)

  it("draws entries that share a trace (hash) as the same entries without it", function()
    local p = random_profile(2000, 11)
    local doc = render(p)
    for _, e in ipairs(p.entries) do e.hash = nil end
    assert.are.equal(doc, render(p))
  end)

  it("draws more than 65,535 distinct names", function()
    local p = { entries = {}, stats = {}, duration = 1, frequency = 1 }
    for i = 1, 70000 do
      p.entries[i] = { count = i == 1 and 70000 or 1, comm = "c",
                       frames = { frame("native", "f" .. i, "m", i), frame("native", "main", "m", 0) } }
    end
    local doc = render(p)
    local got = raw_frames(doc)
    local want = oracle(p, {}, doc)
    assert.are.equal(#want, #got)
    for i = 1, #want do assert.are.same(want[i], got[i]) end
    assert.are.equal("f1", got[2].name) -- the only one wide enough
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
