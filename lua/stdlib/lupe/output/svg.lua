-- An interactive flame graph in one self-contained SVG file (inline <style> and <script>,
-- nothing fetched): open it in a browser.
--   * one rectangle per frame, its width proportional to its samples; the root ("all") at
--     the bottom, then the process name (comm), then the stack root first, as folded;
--     identical labels at the same place in the tree are merged;
--   * click a frame to zoom on it (its ancestors stay, greyed), "Reset Zoom" or Escape
--     to go back; "Search" (or Ctrl-F) highlights the frames whose names match a regular
--     expression and shows the share of samples they cover;
--   * a tooltip on every frame: name, samples, percentage;
--   * the title carries the session's counts (lost, filtered, truncated, errors).
-- Frames narrower than opts.minwidth pixels (default 0.1) are not drawn, as flamegraph.pl
-- does; the subtitle says how many. URL fragments: #search=REGEX runs a search on load;
-- #selftest zooms on the widest process and writes what it finds into document.title
-- (for headless tests, tests/integration/formats_test.lua).
local output = require "lupe.output"

local ffi = require "ffi"
local new_table = require "table.new"

local M = {}
local label = output.label
local ipairs, concat, sort, fmt, floor, byte = ipairs, table.concat, table.sort,
  string.format, math.floor, string.byte
local iotype, copy = io.type, ffi.copy
-- pcall: another module may have declared fwrite already (a redeclaration raises).
pcall(ffi.cdef, "size_t fwrite(const void *ptr, size_t size, size_t n, void *stream);")
local BUFSZ = 65536

-- XML text and attribute values: entities for markup characters, and nothing XML 1.0
-- forbids (control characters, invalid UTF-8 become "?").
local entity = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;" }
local function valid_utf8(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = byte(s, i)
    local len = c < 0x80 and 1 or (c >= 0xc2 and c < 0xe0) and 2 or (c >= 0xe0 and c < 0xf0) and 3
                or (c >= 0xf0 and c < 0xf5) and 4 or 0
    local ok = len > 0 and i + len - 1 <= n
    for j = i + 1, ok and i + len - 1 or 0 do
      local d = byte(s, j)
      if d < 0x80 or d > 0xbf then ok = false end
    end
    if ok and len == 3 then
      local d = byte(s, i + 1)
      if (c == 0xe0 and d < 0xa0) or (c == 0xed and d > 0x9f) then ok = false end
    elseif ok and len == 4 then
      local d = byte(s, i + 1)
      if (c == 0xf0 and d < 0x90) or (c == 0xf4 and d > 0x8f) then ok = false end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = "?"
      i = i + 1
    end
  end
  return concat(out)
end
local function xml(s)
  s = s:gsub("[%z\1-\8\11\12\14-\31\127]", "?")
  if s:find("[\128-\255]") then s = valid_utf8(s) end
  return (s:gsub('[&<>"]', entity))
end
M.xml = xml

-- Deterministic colours per name, in flame graph tradition: warm for user code, orange
-- for the kernel, grey for what could not be resolved, blue-grey for processes.
local function name_hash(s)
  local h1, h2, h3 = 0, 0, 0
  for i = 1, math.min(#s, 24) do
    local c = byte(s, i)
    h1 = (h1 * 31 + c) % 1009
    h2 = (h2 * 37 + c * 7) % 1013
    h3 = (h3 * 41 + c * 13) % 1019
  end
  return h1 / 1009, h2 / 1013, h3 / 1019
end
local function colour(name, kind)
  local a, b, c = name_hash(name)
  if kind == "kernel" then
    return fmt("rgb(%d,%d,%d)", 220 + floor(35 * a), 120 + floor(60 * b), 20 + floor(30 * c))
  elseif kind == "comm" then
    return fmt("rgb(%d,%d,%d)", 150 + floor(30 * a), 170 + floor(30 * b), 200 + floor(40 * c))
  elseif kind == "unknown" or kind == "error" then
    return fmt("rgb(%d,%d,%d)", 170 + floor(30 * a), 170 + floor(30 * a), 170 + floor(30 * a))
  end
  return fmt("rgb(%d,%d,%d)", 205 + floor(50 * c), floor(230 * a), floor(55 * b))
end

-- The stacks, root first, as name ids (a name is a frame's label, or a process's comm):
-- per stack its comm's id, count, and its frames' ids at flat[start .. start + n - 1].
-- Frames are numbered with output.frame_slot (module and address), inline as folded.lua
-- does (a locator closure per frame was a tenth of the time), and each distinct frame is
-- labelled once; entries with the same trace (hash) share their ids.
-- Names are numbered in the order first seen (comm, then frames leaf first), which is the
-- order siblings are written in.
local frame_slot = output.frame_slot
local function collect(profile)
  local entries = profile.entries
  local ne = #entries
  local names, kinds, name_ids, nnames = {}, {}, {}, 0
  local function intern(name, kind)
    local id = name_ids[name]
    if not id then
      nnames = nnames + 1
      id = nnames
      names[id], kinds[id], name_ids[name] = name, kind, id
    end
    return id
  end
  local cap = 0
  for i = 1, ne do cap = cap + #entries[i].frames end
  local flat = ffi.new("int32_t[?]", cap + 1)
  local s_comm, s_start = ffi.new("int32_t[?]", ne + 1), ffi.new("int32_t[?]", ne + 1)
  local s_n, s_count = ffi.new("int32_t[?]", ne + 1), ffi.new("double[?]", ne + 1)
  local by_module, others, comm_id, by_hash = {}, {}, {}, {}
  local used, total, deepest = 0, 0, 0
  for k = 0, ne - 1 do
    local e = entries[k + 1]
    local comm = e.comm or ""
    local c = comm_id[comm]
    if not c then
      c = intern(comm ~= "" and comm or "[unknown]", "comm")
      comm_id[comm] = c
    end
    local frames = e.frames
    local n = #frames
    local h = e.hash
    local same = h and by_hash[h]
    if same and s_n[same] == n then
      s_start[k] = s_start[same]
    else
      for i = 1, n do
        local f = frames[i]
        local ids, key = frame_slot(by_module, others, f)
        local id = ids[key]
        if not id then
          id = intern(label(f), f.kind)
          ids[key] = id
        end
        flat[used + n - i] = id
      end
      s_start[k] = used
      used = used + n
      if h then by_hash[h] = k end
    end
    s_comm[k], s_n[k], s_count[k] = c, n, e.count
    total = total + e.count
    if n + 1 > deepest then deepest = n + 1 end
  end
  return { n = ne, flat = flat, comm = s_comm, start = s_start, len = s_n, count = s_count,
           names = names, kinds = kinds, total = total, deepest = deepest }
end

-- Sort keys: value * SLOT + a bucket's place among its siblings, exact in a double.
local SLOT = 134217728 -- 2^27
local function sort_keys(keys, k)
  if k <= 16 then
    for i = 2, k do
      local v, j = keys[i], i - 1
      while j >= 1 and keys[j] > v do keys[j + 1] = keys[j] j = j - 1 end
      keys[j + 1] = v
    end
    return
  end
  local t = new_table(k, 0)
  for i = 1, k do t[i] = keys[i] end
  sort(t)
  for i = 1, k do keys[i] = t[i] end
end

-- The merged tree, as flamegraph.pl draws it: identical names at the same place merged,
-- a frame kept if at least min_samples wide (its descendants are narrower: kept frames
-- always include their parents). Built top-down: the stacks of a frame are bucketed by
-- their name one level deeper (a counting sort of their indexes, in place), each bucket a
-- child. A stack alone in its bucket is a chain, taken without more bucketing; a bucket
-- too narrow is only counted (its frames, as pruned), never laid out.
-- Siblings are laid out in name order, as flamegraph.pl shows them, the room of frames
-- too narrow to draw to the right of their siblings; they are listed children first
-- (post-order), siblings in name id order.
-- Returns nodes {depth, name id, x, width} (in samples; "all" is not among them) in
-- Lua arrays 1..n, the names, their kinds, the total, pruned (frames not kept) and
-- deepest (depth).
local function build_tree(profile, min_samples)
  local st = collect(profile)
  local ns, names = st.n, st.names
  local flat, s_comm, s_start, s_n, s_count = st.flat, st.comm, st.start, st.len, st.count
  if ns >= SLOT or #names * SLOT >= 2 ^ 53 then error("svg: too many stacks or names", 3) end

  -- Name order: rank of each name id.
  local order, rank = {}, {}
  for i = 1, #names do order[i] = i end
  sort(order, function(a, b) return names[a] < names[b] end)
  for r, id in ipairs(order) do rank[id] = r end

  local perm, tmp, bk = ffi.new("int32_t[?]", ns + 1), ffi.new("int32_t[?]", ns + 1),
    ffi.new("int32_t[?]", ns + 1)
  for i = 0, ns - 1 do perm[i] = i end
  -- Buckets, a stack of them: those of the frames on the current path. Each level holds
  -- at most (its stacks - the next level's stacks + 1): ns + deepest + 1 in all.
  local nb = ns + st.deepest + 2
  local b_name, b_lo, b_cnt, b_at = ffi.new("int32_t[?]", nb), ffi.new("int32_t[?]", nb),
    ffi.new("int32_t[?]", nb), ffi.new("int32_t[?]", nb)
  local b_w, b_x = ffi.new("double[?]", nb), ffi.new("double[?]", nb)
  local slot = ffi.new("int32_t[?]", #names + 1) -- name id -> its bucket, while bucketing
  local bsp, pruned = 0, 0
  local nd, nname, nx, nw, nn = {}, {}, {}, {}, 0
  local scratch = {} -- sort keys per depth

  -- Buckets the stacks perm[lo, hi), which share their names down to depth d, by their
  -- name at depth d + 1 (comm at depth 1): b_*[b0 + 1 .. bsp], stacks ending at depth d
  -- left after them. Returns b0.
  local function partition(lo, hi, d)
    local b0 = bsp
    for i = lo, hi - 1 do
      local s = perm[i]
      if s_n[s] >= d then
        local id = d == 0 and s_comm[s] or flat[s_start[s] + d - 1]
        local b = slot[id]
        if b == 0 then
          bsp = bsp + 1
          b = bsp
          slot[id], b_name[b], b_cnt[b], b_w[b] = b, id, 0, 0
        end
        b_cnt[b] = b_cnt[b] + 1
        b_w[b] = b_w[b] + s_count[s]
        bk[i] = b
      else
        bk[i] = 0
      end
    end
    local at = lo
    for b = b0 + 1, bsp do
      slot[b_name[b]] = 0
      b_lo[b], b_at[b] = at, at
      at = at + b_cnt[b]
    end
    if bsp > b0 + 1 or at < hi then
      for i = lo, hi - 1 do
        local b = bk[i]
        if b == 0 then
          tmp[at] = perm[i]
          at = at + 1
        else
          local p = b_at[b]
          tmp[p] = perm[i]
          b_at[b] = p + 1
        end
      end
      ffi.copy(perm + lo, tmp + lo, 4 * (hi - lo))
    end
    return b0
  end

  -- Frames below a frame at depth d whose stacks are perm[lo, hi).
  local function count_below(lo, hi, d)
    if hi - lo == 1 then return s_n[perm[lo]] + 1 - d end
    local b0 = partition(lo, hi, d)
    local c = 0
    for b = b0 + 1, bsp do c = c + 1 + count_below(b_lo[b], b_lo[b] + b_cnt[b], d + 1) end
    bsp = b0
    return c
  end

  local function keep(id, d, x, w)
    nn = nn + 1
    nd[nn], nname[nn], nx[nn], nw[nn] = d, id, x, w
  end

  -- Lists the kept frames below a frame at depth d, left edge x, stacks perm[lo, hi).
  local function visit(lo, hi, d, x)
    local x0 = x
    if hi - lo == 1 then
      local s = perm[lo]
      local len, w, first = s_n[s] + 1, s_count[s], s_start[s] - 2
      if w < min_samples then
        pruned = pruned + len - d
        return
      end
      for dd = len, d + 1, -1 do keep(dd == 1 and s_comm[s] or flat[first + dd], dd, x, w) end
      return
    end
    -- Frames every stack here shares, one under the other (a deep recursion): followed
    -- in a loop, not by recursion, and kept after the frames below them.
    local d0, b0 = d, partition(lo, hi, d)
    while bsp == b0 + 1 and b_cnt[bsp] == hi - lo and b_w[bsp] >= min_samples do
      bsp = b0
      d = d + 1
      b0 = partition(lo, hi, d)
    end
    local top = bsp
    local keys = scratch[d]
    if not keys then keys = {} scratch[d] = keys end
    local k = 0
    for b = b0 + 1, top do
      if b_w[b] >= min_samples then
        k = k + 1
        keys[k] = rank[b_name[b]] * SLOT + (b - b0)
      else
        pruned = pruned + 1 + count_below(b_lo[b], b_lo[b] + b_cnt[b], d + 1)
      end
    end
    sort_keys(keys, k)
    for j = 1, k do
      local b = b0 + keys[j] % SLOT
      b_x[b] = x
      x = x + b_w[b]
      keys[j] = b_name[b] * SLOT + (b - b0)
    end
    sort_keys(keys, k)
    for j = 1, k do
      local b = b0 + keys[j] % SLOT
      visit(b_lo[b], b_lo[b] + b_cnt[b], d + 1, b_x[b])
      keep(b_name[b], d + 1, b_x[b], b_w[b])
    end
    bsp = b0
    if d > d0 then
      local s, w = perm[lo], 0
      for i = lo, hi - 1 do w = w + s_count[perm[i]] end
      for dd = d, d0 + 1, -1 do
        keep(dd == 1 and s_comm[s] or flat[s_start[s] + dd - 2], dd, x0, w)
      end
    end
  end
  visit(0, ns, 0, 0)

  return { depth = nd, name = nname, x = nx, w = nw, n = nn, names = names,
           kinds = st.kinds, total = st.total, pruned = pruned, deepest = st.deepest }
end

function M.tree(profile, min_samples)
  return build_tree(profile, min_samples or 0)
end

-- The script: zoom, reset, search, details, #search= and #selftest. Kept small and
-- written for this file's structure: each frame is <g><title>NAME (INFO)</title><rect/>
-- <text/></g> inside <g id="frames">, the <text> only where a label fits.
local SCRIPT = [[
"use strict";
var W, PAD, FH, FONT, frames = [], root = null, zoomed = null, query = null;
var details, matchedText, resetBtn;
function $(id) { return document.getElementById(id); }
function init() {
  var svg = document.documentElement;
  W = +svg.getAttribute("width"); PAD = +svg.getAttribute("data-pad");
  FH = +svg.getAttribute("data-fh"); FONT = +svg.getAttribute("data-font");
  details = $("details"); matchedText = $("matched"); resetBtn = $("reset");
  var gs = $("frames").children;
  for (var i = 0; i < gs.length; i++) {
    var g = gs[i], title = g.firstElementChild.textContent, cut = title.lastIndexOf(" (");
    var r = g.querySelector("rect");
    var f = { g: g, r: r, t: g.querySelector("text"), name: title.substring(0, cut),
              info: title.substring(cut + 2, title.length - 1), x: +r.getAttribute("x"),
              w: +r.getAttribute("width"), y: +r.getAttribute("y"), fill: r.getAttribute("fill") };
    f.unlabelled = !f.t;
    g.lupeFrame = f;
    frames.push(f);
    if (!root || f.y > root.y) root = f;
  }
  $("frames").addEventListener("click", function (e) {
    var g = e.target.closest("g"); if (g && g.lupeFrame) zoom(g.lupeFrame);
  });
  $("frames").addEventListener("mouseover", function (e) {
    var g = e.target.closest("g");
    if (g && g.lupeFrame) details.textContent = g.lupeFrame.name + " (" + g.lupeFrame.info + ")";
  });
  $("frames").addEventListener("mouseout", function () { details.textContent = " "; });
  resetBtn.addEventListener("click", unzoom);
  $("search").addEventListener("click", function () { query ? clearSearch() : askSearch(); });
  window.addEventListener("keydown", function (e) {
    if ((e.ctrlKey && e.key === "f") || e.key === "/") { e.preventDefault(); askSearch(); }
    else if (e.key === "Escape") { unzoom(); clearSearch(); }
  });
  var h = window.location.hash;
  if (h.indexOf("#search=") === 0) search(decodeURIComponent(h.substring(8)));
  if (h === "#selftest") selftest();
}
// Frames too narrow for a label have no <text> in the file; one is made when a zoom
// widens them.
function fitText(f, w) {
  var n = Math.floor((w - 6) / (FONT * 0.59));
  var s = n < 3 ? "" : f.name.length <= n ? f.name : f.name.substring(0, n - 2) + "..";
  if (!f.t) {
    if (s === "") return;
    f.t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    f.t.setAttribute("y", (f.y + FH - 4.5).toFixed(1));
    f.g.appendChild(f.t);
  }
  f.t.textContent = s;
}
function place(f, x, w) {
  f.r.setAttribute("x", x.toFixed(2)); f.r.setAttribute("width", w.toFixed(2));
  fitText(f, w); if (f.t) f.t.setAttribute("x", (x + 3).toFixed(2));
}
function zoom(z) {
  var eps = 1e-6, scale = (W - 2 * PAD) / z.w;
  for (var i = 0; i < frames.length; i++) {
    var f = frames[i];
    if (f.y > z.y && f.x <= z.x + eps && f.x + f.w >= z.x + z.w - eps) {
      f.g.style.display = ""; f.g.classList.add("parent"); place(f, PAD, W - 2 * PAD);
    } else if (f.y <= z.y && f.x >= z.x - eps && f.x + f.w <= z.x + z.w + eps) {
      f.g.style.display = ""; f.g.classList.remove("parent");
      place(f, PAD + (f.x - z.x) * scale, f.w * scale);
    } else {
      f.g.style.display = "none";
    }
  }
  zoomed = z; resetBtn.style.opacity = 1;
}
function unzoom() {
  for (var i = 0; i < frames.length; i++) {
    var f = frames[i];
    f.g.style.display = ""; f.g.classList.remove("parent"); place(f, f.x, f.w);
  }
  zoomed = null; resetBtn.style.opacity = 0;
}
function askSearch() {
  var term = window.prompt("Search frames (regular expression):", query || "");
  if (term) search(term);
}
function clearSearch() {
  for (var i = 0; i < frames.length; i++) frames[i].r.setAttribute("fill", frames[i].fill);
  query = null; matchedText.textContent = " "; $("search").textContent = "Search";
}
// Highlights matches; returns the share of all samples under a matching frame (overlaps
// counted once: a match inside a match adds nothing).
function search(term) {
  var re; try { re = new RegExp(term); } catch (e) { matchedText.textContent = "bad regex"; return -1; }
  var spans = [];
  for (var i = 0; i < frames.length; i++) {
    var f = frames[i];
    if (f !== root && re.test(f.name)) {
      f.r.setAttribute("fill", "rgb(230,0,230)"); spans.push([f.x, f.x + f.w]);
    } else {
      f.r.setAttribute("fill", f.fill);
    }
  }
  spans.sort(function (a, b) { return a[0] - b[0]; });
  var covered = 0, end = -Infinity;
  for (var j = 0; j < spans.length; j++) {
    var s = Math.max(spans[j][0], end);
    if (spans[j][1] > s) { covered += spans[j][1] - s; end = spans[j][1]; }
  }
  var pct = 100 * covered / root.w;
  query = term; $("search").textContent = "Clear";
  matchedText.textContent = "Matched: " + pct.toFixed(1) + "%";
  return pct;
}
function selftest() {
  var out = ["rects=" + document.querySelectorAll("#frames rect").length], ok = true, best = null;
  for (var i = 0; i < frames.length; i++) {
    var f = frames[i];
    if (Math.abs(f.y - (root.y - FH)) < 0.01 && (!best || f.w > best.w)) best = f;
  }
  if (!best) { document.title = "selftest FAIL no-child " + out.join(" "); return; }
  zoom(best);
  var x = +best.r.getAttribute("x"), w = +best.r.getAttribute("width");
  var full = Math.abs(x - PAD) < 0.01 && Math.abs(w - (W - 2 * PAD)) < 0.01;
  var rx = +root.r.getAttribute("x"), rw = +root.r.getAttribute("width");
  var hidden = 0, outside = 0, grown = 0;
  for (var k = 0; k < frames.length; k++) {
    var g = frames[k];
    if (g.g.style.display === "none") { hidden++; continue; }
    if (g.unlabelled && g.t && g.t.textContent !== "") grown++;
    var gx = +g.r.getAttribute("x"), gw = +g.r.getAttribute("width");
    if (gx < PAD - 0.01 || gx + gw > W - PAD + 0.01) outside++;
  }
  var label = best.t && best.t.textContent === best.name;
  ok = ok && full && label && outside === 0 && Math.abs(rx - PAD) < 0.01 &&
       Math.abs(rw - (W - 2 * PAD)) < 0.01;
  out.push("zoom=" + (full ? "full" : "x" + x + "w" + w), "zoomed=" + best.name,
           "hidden=" + hidden, "outside=" + outside, "label=" + (label ? "ok" : "bad"),
           "grown=" + grown);
  unzoom();
  var back = Math.abs(+best.r.getAttribute("width") - best.w) < 0.01;
  ok = ok && back;
  out.push("reset=" + (back ? "ok" : "bad"));
  var pct = search("^" + best.name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "$");
  out.push("matched=" + pct.toFixed(1));
  clearSearch();
  document.title = "selftest " + (ok ? "ok" : "FAIL") + " " + out.join(" ");
}
]]

local STYLE = [[
text { font-family: Verdana, sans-serif; fill: rgb(0,0,0); }
#title { font-size: 17px; text-anchor: middle; }
#subtitle, #counts { font-size: 12px; text-anchor: middle; fill: rgb(80,80,80); }
#details, #matched { font-size: 12px; }
#matched { text-anchor: end; }
.button { font-size: 12px; cursor: pointer; fill: rgb(0,0,160); }
#reset { opacity: 0; }
#frames g { cursor: pointer; }
#frames rect { stroke: rgb(255,255,255); stroke-width: 0.3; rx: 2px; ry: 2px; }
#frames text { font-size: 12px; pointer-events: none; }
#frames g:hover rect { stroke: rgb(0,0,0); stroke-width: 0.7; }
#frames g.parent { opacity: 0.5; }
]]

-- opts: width (px, default 1200), minwidth (px, default 0.1), title.
function M.write(profile, fh, opts)
  opts = opts or {}
  local W = opts.width or 1200
  local PAD, FH, FONT, TOP, BOTTOM = 10, 16, 12, 84, 30
  local minwidth = opts.minwidth or 0.1
  local st = profile.stats or {}

  -- Total first, for the pruning threshold in samples.
  local total = 0
  for _, e in ipairs(profile.entries) do total = total + e.count end
  local scale = total > 0 and (W - 2 * PAD) / total or 0
  local t = M.tree(profile, total > 0 and minwidth / scale or 0)

  -- The counts, wrapped to the width (Verdana at 12 px: 7.5 px per character at most).
  local count_lines, line = {}, nil
  local per_line = floor((W - 2 * PAD) / 7.5)
  for word in output.counts_summary(st):gmatch("%S+") do
    if line and #line + 1 + #word > per_line then
      count_lines[#count_lines + 1] = line
      line = nil
    end
    line = line and (line .. " " .. word) or word
  end
  count_lines[#count_lines + 1] = line
  TOP = TOP + 16 * (#count_lines - 1)

  local depth = t.deepest + 1 -- "all" is depth 0
  local H = TOP + depth * FH + BOTTOM
  -- Through a 64 KiB C buffer: a Lua file gets it through fwrite (its FILE *), anything
  -- else with :write gets it as strings. The whole file is never one string.
  local buf, pos = ffi.new("char[?]", BUFSZ), 0
  local fp = iotype(fh) == "file" and ffi.cast("void *", fh) or nil
  local function flush()
    if fp then
      if ffi.C.fwrite(buf, 1, pos, fp) ~= pos then error("svg: write failed", 3) end
    elseif pos > 0 then
      fh:write(ffi.string(buf, pos))
    end
    pos = 0
  end
  local function put(s)
    local n = #s
    if pos + n > BUFSZ then
      flush()
      if n > BUFSZ then
        fh:write(s)
        return
      end
    end
    copy(buf + pos, s, n)
    pos = pos + n
  end
  put(fmt('<?xml version="1.0" standalone="no"?>\n<svg version="1.1" width="%d" height="%d" ' ..
          'viewBox="0 0 %d %d" xmlns="http://www.w3.org/2000/svg" data-pad="%d" data-fh="%d" ' ..
          'data-font="%d" onload="init()">\n', W, H, W, H, PAD, FH, FONT))
  put("<style>\n" .. STYLE .. "</style>\n<script><![CDATA[\n" .. SCRIPT .. "]]></script>\n")
  put(fmt('<defs><linearGradient id="bg" x1="0" y1="0" x2="0" y2="1"><stop offset="5%%" ' ..
          'stop-color="rgb(238,238,238)"/><stop offset="95%%" stop-color="rgb(238,238,176)"/>' ..
          '</linearGradient></defs>\n<rect x="0" y="0" width="%d" height="%d" fill="url(#bg)"/>\n',
          W, H))
  put(fmt('<text id="title" x="%d" y="24">%s</text>\n', W / 2,
          xml(opts.title or "Flame graph")))
  put(fmt('<text id="subtitle" x="%d" y="44">%s</text>\n', W / 2, xml(fmt(
    "lupe: %d samples at %d Hz over %.1f s on %d CPUs, target %s; %d frames narrower " ..
    "than %.2g px not drawn", total, profile.frequency or 0, profile.duration or 0,
    st.ncpus or 0, output.describe_target(profile.target), t.pruned, minwidth))))
  local spans = {}
  for i, l in ipairs(count_lines) do
    spans[i] = fmt('<tspan x="%d" dy="%d">%s</tspan>', W / 2, i > 1 and 16 or 0, xml(l))
  end
  put(fmt('<text id="counts" x="%d" y="60">%s</text>\n', W / 2, concat(spans)))
  put(fmt('<text id="reset" class="button" x="%d" y="%d">Reset Zoom</text>\n', PAD, TOP - 6))
  put(fmt('<text id="search" class="button" x="%d" y="%d" text-anchor="end">Search</text>\n',
          W - PAD, TOP - 6))
  put(fmt('<text id="matched" x="%d" y="%d"> </text>\n', W - PAD, H - 10))
  put(fmt('<text id="details" x="%d" y="%d"> </text>\n', PAD, H - 10))
  put('<g id="frames">\n')

  -- Frames are copied into the buffer piece by piece, numbers written digit by digit;
  -- the caller makes room first (a frame at most its strings + ROOM bytes).
  local ROOM = 2048
  local function raw(s)
    local n = #s
    copy(buf + pos, s, n)
    pos = pos + n
  end
  local function int(v) -- 0 <= v < 2^53, an integer
    local last, rest = pos, v
    while rest >= 10 do rest = floor(rest / 10) last = last + 1 end
    pos = last + 1
    repeat
      local q = floor(v / 10)
      buf[last] = 48 + v - q * 10
      v = q
      last = last - 1
    until v == 0
  end
  -- "%.2f" without string.format: v * 100 rounded to an integer has the same digits,
  -- except near a half, where the product's rounding error could decide; there (and for
  -- large or odd values) string.format does.
  local function fixed2(v)
    local r = v * 100
    if r >= 0 and r < 1e9 then
      local n = floor(r)
      local f = r - n
      if f < 0.499999 or f > 0.500001 then
        if f > 0.5 then n = n + 1 end
        local i = floor(n / 100)
        int(i)
        n = n - i * 100
        local tens = floor(n / 10)
        buf[pos], buf[pos + 1], buf[pos + 2] = 46, 48 + tens, 48 + n - tens * 10
        pos = pos + 3
        return
      end
    end
    raw(fmt("%.2f", v))
  end

  -- Per name id (0: the root), once: the start of its frame (title), its end (colour);
  -- per name and width in characters, once: its label (cut, then escaped: cutting escaped
  -- text could split an entity). Per row, once: its y attributes.
  local head_of, tail_of, title_of, cut_of, y_of, ty_of = {}, {}, {}, {}, {}, {}
  local pct = total > 0 and 100 / total or 0
  local char_w = FONT * 0.59
  local function frame(id, name, kind, samples, x, w, y)
    local head = head_of[id]
    if not head then
      local title = xml(name)
      head = "<g><title>" .. title .. " ("
      head_of[id], title_of[id], cut_of[id] = head, title, {}
      tail_of[id] = fmt('" height="%d" fill="%s"/>', FH - 1, colour(name, kind))
    end
    local nchars = floor((w - 6) / char_w)
    local text = ""
    if nchars >= 3 then
      if #name <= nchars then
        text = title_of[id]
      else
        local cuts = cut_of[id]
        text = cuts[nchars]
        if not text then
          text = xml(name:sub(1, nchars - 2) .. "..")
          cuts[nchars] = text
        end
      end
    end
    local yat = y_of[y]
    if not yat then
      yat = fmt('" y="%d" width="', y)
      y_of[y], ty_of[y] = yat, fmt('" y="%.1f">', y + FH - 4.5)
    end
    local tail = tail_of[id]
    local room = #head + #tail + #text + ROOM
    if pos + room > BUFSZ then flush() end
    if room > BUFSZ then -- a name longer than the buffer: this frame as one string
      put(fmt('%s%d samples, %.2f%%)</title><rect x="%.2f%s%.2f%s', head, samples,
              samples * pct, x, yat, w, tail))
      if text ~= "" then put(fmt('<text x="%.2f%s%s</text>', x + 3, ty_of[y], text)) end
      put("</g>\n")
      return
    end
    raw(head)
    if samples >= 0 and samples < 2 ^ 53 and samples == floor(samples) then
      int(samples)
    else
      raw(fmt("%d", samples))
    end
    raw(" samples, ")
    fixed2(samples * pct)
    raw('%)</title><rect x="')
    fixed2(x)
    raw(yat)
    fixed2(w)
    raw(tail)
    if text ~= "" then
      raw('<text x="')
      fixed2(x + 3)
      raw(ty_of[y])
      raw(text)
      raw("</text>")
    end
    raw("</g>\n")
  end
  local base = H - BOTTOM - FH -- y of the root
  frame(0, "all", "comm", total, PAD, total * scale, base)
  local names, kinds, depth_of, name_of, xs, ws = t.names, t.kinds, t.depth, t.name, t.x, t.w
  for i = 1, t.n do
    local id = name_of[i]
    frame(id, names[id], kinds[id], ws[i], PAD + xs[i] * scale, ws[i] * scale,
          base - depth_of[i] * FH)
  end
  put("</g>\n")
  if total == 0 then
    put(fmt('<text x="%d" y="%d" text-anchor="middle">no samples</text>\n', W / 2, base - FH))
  end
  put("</svg>\n")
  flush()
  return t.n + 1
end

return M
