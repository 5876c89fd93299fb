-- lupe record --format pprof|speedscope|svg|json end to end: a real recording of a hot
-- program, read back by outside consumers where they exist (go tool pprof, Chromium,
-- python3's json) and by tests/lua/output_decode.lua (readers written from the format
-- specifications). Needs root for BPF; each consumer that is missing SKIPs visibly with
-- the Debian package to install.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local decode = dofile(dir .. "/../lua/output_decode.lua")
local codec = require("lupe.native").codec
local check = t.check

local tmp, built

local function build()
  if built then return end
  tmp = t.tmpdir()
  local c = ("clang -O2 -g -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -pthread " ..
             "-o %s/hot %s/src/hot.c"):format(tmp, t.fixtures)
  local rc, out = t.sh(c)
  if rc ~= 0 then error("fixture build failed: " .. c .. "\n" .. out) end
  built = true
end

local function needs_root()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  build()
end

local function have(cmd)
  return (t.sh("command -v " .. cmd)) == 0
end

local slurp = t.slurp

-- Records `hot 1500` in FORMAT once; returns the output file's path and contents.
local recorded = {}
local function record(format)
  if recorded[format] then return recorded[format].path, recorded[format].body end
  local out = ("%s/out.%s"):format(tmp, format)
  os.remove(out)
  local status, _, err = t.run(("%s record -F 999 -f %s -o %s -- %s/hot 1500")
    :format(t.bin, format, out, tmp))
  check(status == 0, "record -f %s exited %s: %s", format, status, err)
  local body = slurp(out)
  check(body and #body > 0, "record -f %s wrote nothing (%s)", format, err)
  recorded[format] = { path = out, body = body }
  return out, body
end

t.case("pprof: gzipped profile.proto with hot_inner the heaviest leaf, counts in comments", function()
  needs_root()
  local _, body = record("pprof")
  local p = decode.pprof(assert(codec.gunzip(body)))
  check(#p.sample > 0, "no samples")
  check(p.sample_type[1].type == "samples" and p.sample_type[2].unit == "nanoseconds",
        "sample types")
  local text = table.concat(p.comment, "\n")
  check(text:match("lost=%d+") and text:match("truncated=%d+"), "comments: %s", text)
  local fname, loc_fn = {}, {}
  for _, f in ipairs(p["function"]) do fname[f.id] = f.name end
  for _, l in ipairs(p.location) do loc_fn[l.id] = fname[l.line[1].function_id] end
  local total, inner = 0, 0
  for _, smp in ipairs(p.sample) do
    total = total + smp.value[1]
    if loc_fn[smp.location_id[1]] == "hot_inner" then inner = inner + smp.value[1] end
  end
  check(inner / total >= 0.8, "hot_inner leaf in %d of %d samples", inner, total)
end)

t.case("pprof: go tool pprof reads it and puts hot_inner on top", function()
  needs_root()
  local path = record("pprof")
  if not have("go") then t.skip("go tool pprof not found (Debian package golang-go)") end
  local env = ("HOME=%s GOCACHE=%s/gocache GOFLAGS= "):format(tmp, tmp)
  local rc, out = t.sh(env .. "go tool pprof -top -nodecount=5 " .. path)
  check(rc == 0, "go tool pprof -top failed: %s", out)
  local first = out:match("flat%%[^\n]*\n([^\n]+)")
  check(first and first:match("hot_inner%s*$"), "top row is not hot_inner:\n%s", out)
  local pct = tonumber(first:match("([%d.]+)%%"))
  check(pct and pct >= 80, "hot_inner flat share %s%%:\n%s", tostring(pct), out)
  rc, out = t.sh(env .. "go tool pprof -raw " .. path)
  check(rc == 0, "go tool pprof -raw failed: %s", out)
  check(out:match("Comment: lupe: samples=%d+ lost=%d+"), "no counts in -raw:\n%s", out:sub(1, 800))
  check(out:match("samples/count cpu/nanoseconds"), "sample types in -raw")
end)

local function find_chromium()
  for _, c in ipairs({ "chromium", "chromium-browser", "google-chrome" }) do
    if have(c) then return c end
  end
end

-- Opens the SVG at path#selftest in headless Chromium; returns what its self-test wrote
-- into document.title (see lupe/output/svg.lua).
local function selftest(chromium, path)
  local profile_dir = t.tmpdir()
  local rc, out = t.sh(("timeout 120 %s --headless --no-sandbox --disable-gpu " ..
    "--disable-background-networking --disable-component-update --disable-sync " ..
    "--no-first-run --user-data-dir=%s --dump-dom 'file://%s#selftest' 2>/dev/null")
    :format(chromium, profile_dir, path))
  os.execute("rm -rf " .. profile_dir)
  check(rc == 0, "chromium exited %d: %s", rc, out:sub(1, 500))
  local title = out:match("<title>(selftest[^<]*)</title>")
  check(title, "no selftest result in the DOM: %s", out:sub(1, 300))
  return title
end

-- Structural check of speedscope's file format (src/lib/file-format-spec.ts).
local function check_speedscope(doc)
  check(doc["$schema"] == "https://www.speedscope.app/file-format-schema.json", "$schema")
  check(type(doc.shared) == "table" and type(doc.shared.frames) == "table", "shared.frames")
  local nframes = doc.shared.frames.n
  for i = 1, nframes do
    local f = doc.shared.frames[i]
    check(type(f.name) == "string", "frame %d has no name", i)
    check(f.file == nil or type(f.file) == "string", "frame %d file", i)
  end
  check(type(doc.profiles) == "table" and doc.profiles.n >= 1, "profiles")
  for i = 1, doc.profiles.n do
    local p = doc.profiles[i]
    check(p.type == "sampled", "profile %d type %s", i, tostring(p.type))
    check(type(p.name) == "string", "profile %d name", i)
    check(p.unit == "none" or p.unit == "nanoseconds", "unit")
    check(type(p.startValue) == "number" and type(p.endValue) == "number", "values")
    check(p.samples.n == p.weights.n, "profile %d: %d samples, %d weights", i, p.samples.n,
          p.weights.n)
    local sum = 0
    for j = 1, p.samples.n do
      sum = sum + p.weights[j]
      for k = 1, p.samples[j].n do
        local idx = p.samples[j][k]
        check(type(idx) == "number" and idx % 1 == 0 and idx >= 0 and idx < nframes,
              "profile %d sample %d: bad frame index %s", i, j, tostring(idx))
      end
    end
    check(sum == p.endValue - p.startValue, "profile %d: weights %d, span %d", i, sum,
          p.endValue - p.startValue)
  end
end

t.case("speedscope: strict JSON, the file format's structure, hot_inner heaviest", function()
  needs_root()
  local _, body = record("speedscope")
  local doc = decode.json(body)
  check_speedscope(doc)
  local p = doc.profiles[1]
  -- The command runs as "lupe" between fork and exec: "hot/lupe (PID)".
  check(p.name:match("^hot[/ ]"), "heaviest profile is %s", p.name)
  local leaf = {}
  for j = 1, p.samples.n do
    local s = p.samples[j]
    local name = doc.shared.frames[s[s.n] + 1].name
    leaf[name] = (leaf[name] or 0) + p.weights[j]
  end
  local best, bw = nil, -1
  for k, v in pairs(leaf) do if v > bw then best, bw = k, v end end
  check(best == "hot_inner", "heaviest leaf %s", tostring(best))
  check(type(doc.lupe.counts.lost) == "number", "counts")
end)

t.case("speedscope: python3's json module reads the same document", function()
  needs_root()
  local path, body = record("speedscope")
  local doc = decode.json(body)
  if not have("python3") then t.skip("python3 not found: no second JSON parser to cross-check") end
  local rc, out = t.sh(("python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); " ..
    "print(len(d[\"profiles\"]), len(d[\"shared\"][\"frames\"]))' %s"):format(path))
  check(rc == 0, "python3 json.load failed: %s", out)
  check(out:match("^(%d+) (%d+)") == tostring(doc.profiles.n) and
        select(2, out:match("^(%d+) (%d+)")) == tostring(doc.shared.frames.n),
        "python3 sees %s", out)
end)

t.case("svg: frames drawn, hot_inner among them, counts in the title lines", function()
  needs_root()
  local _, body = record("svg")
  local frames = body:match('<g id="frames">(.*)</g>')
  check(frames, "no frames group")
  local _, nrects = frames:gsub("<rect ", "")
  check(nrects >= 5, "only %d frames", nrects)
  check(body:match('<text id="counts".-lost=%d+.-</text>'), "no counts in the title lines")
  check(frames:match("<title>hot_inner %(%d+ samples"), "no hot_inner frame")
end)

t.case("svg: renders in headless Chromium, zoom fills the width, search matches", function()
  needs_root()
  local path, body = record("svg")
  local _, nrects = body:match('<g id="frames">(.*)</g>'):gsub("<rect ", "")
  local chromium = find_chromium()
  if not chromium then t.skip("no headless browser (Debian package chromium)") end
  local title = selftest(chromium, path)
  check(title:match("^selftest ok "), "selftest: %s", title)
  check(tonumber(title:match("rects=(%d+)")) == nrects, "%s: the file has %d frames", title, nrects)
  check(title:match("zoom=full"), "zoom: %s", title)
  check(title:match("zoomed=hot "), "zoomed on the widest process: %s", title)
  local matched = tonumber(title:match("matched=([%d.]+)"))
  check(matched and matched > 90, "search for the hot process matched %s%%", tostring(matched))
end)

t.case("svg, no BPF: a zoom labels a frame that was too narrow for one", function()
  local chromium = find_chromium()
  if not chromium then t.skip("no headless browser (Debian package chromium)") end
  if not tmp then tmp = t.tmpdir() end
  -- 1180 px for 1180 samples: "t" (20 px) has no room for a label; zooming on "a" (700
  -- samples, the widest process) scales it by 1180/700 to 33.7 px: room for 3 characters.
  local script, path = tmp .. "/narrow.lua", tmp .. "/narrow.svg"
  local f = assert(io.open(script, "w"))
  f:write(([[
local function fr(name) return { kind = "native", name = name, module = "m", addr = #name } end
local p = { entries = {
  { count = 680, pid = 1, comm = "a", frames = { fr("main") } },
  { count = 20, pid = 1, comm = "a", frames = { fr("t"), fr("main") } },
  { count = 480, pid = 2, comm = "b", frames = { fr("other") } },
}, stats = {}, duration = 1, frequency = 1 }
local out = assert(io.open(%q, "w"))
require("lupe.output.svg").write(p, out)
out:close()
]]):format(path))
  f:close()
  local rc, out = t.sh(t.bin .. " run " .. script)
  check(rc == 0, "writing the svg failed: %s", out)
  local body = slurp(path)
  check(not body:match("<title>t %(20 samples[^<]*</title><rect[^>]*/><text"),
        "t has a label before the zoom")
  local title = selftest(chromium, path)
  check(title:match("^selftest ok ") and title:match("zoomed=a "), "selftest: %s", title)
  check(title:match("grown=1$") or title:match("grown=1 "), "no label grew: %s", title)
end)

t.case("json: a header with the counts, then one parsable line per stack, leaf first", function()
  needs_root()
  local _, body = record("json")
  local lines = {}
  for l in body:gmatch("([^\n]*)\n") do lines[#lines + 1] = decode.json(l) end
  check(#lines >= 2, "%d lines", #lines)
  local h = lines[1]
  check(h.format == "lupe-json" and h.frames == "leaf-first", "header %s", tostring(h.format))
  check(type(h.counts.lost) == "number" and type(h.counts.truncated) == "number", "counts")
  local total, inner = 0, 0
  for i = 2, #lines do
    local e = lines[i]
    check(type(e.pid) == "number" and type(e.count) == "number" and #e.hash == 32, "line %d", i)
    total = total + e.count
    local leaf = e.frames[1]
    if leaf and leaf["function"] == "hot_inner" then
      inner = inner + e.count
      check(leaf.address:match("^0x%x+$") and leaf.kind == "native", "leaf fields")
    end
  end
  check(inner / total >= 0.8, "hot_inner leaf in %d of %d samples", inner, total)
end)

local rc = t.run_all()
if tmp then os.execute("rm -rf " .. tmp) end
return rc
