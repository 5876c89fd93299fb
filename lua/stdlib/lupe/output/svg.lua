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

local M = {}
local label, locator = output.label, output.locator
local ipairs, concat, sort, fmt, floor, byte, char = ipairs, table.concat, table.sort,
  string.format, math.floor, string.byte, string.char

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

-- Names become fixed-width big-endian codes, so that a stack is a short string and byte
-- order is code order: 2 bytes (up to 65,535 names, the usual case), else 3 (2^24).
local function code(i, width)
  if width == 2 then return char(floor(i / 256), i % 256) end
  return char(floor(i / 65536) % 256, floor(i / 256) % 256, i % 256)
end
local TOO_MANY = {}

-- The merged tree, as flamegraph.pl builds it: stacks sorted root first (as strings of
-- name codes), then one walk that opens and closes frames as consecutive stacks
-- diverge. Only the current path is held; a closed frame is kept if at least min_samples
-- wide (its descendants are narrower: the kept frames always include their parents).
-- Siblings are then laid out in name order, as flamegraph.pl shows them; the room of
-- frames too narrow to draw goes to the right of their siblings.
-- Returns nodes {depth, name id, x, width} (in samples; "all" is not among them), the
-- names, their kinds, the total, pruned (frames not kept) and deepest (depth).
local function build_tree(profile, min_samples, width)
  local max_names = width == 2 and 65535 or 2 ^ 24 - 1
  local locate = locator()
  local loc_code, names, kinds, name_ids, codes = {}, {}, {}, {}, {}
  local function intern(name, kind)
    local id = name_ids[name]
    if not id then
      id = #names + 1
      if id > max_names then error(TOO_MANY, 0) end
      names[id], kinds[id], name_ids[name] = name, kind, id
      codes[id] = code(id, width)
    end
    return codes[id]
  end

  -- Stacks as code strings, counts merged.
  local counts, keys, parts, comm_code = {}, {}, {}, {}
  local total = 0
  for _, e in ipairs(profile.entries) do
    local frames = e.frames
    local n = #frames
    local comm = e.comm or ""
    local cc = comm_code[comm]
    if not cc then cc = intern(comm ~= "" and comm or "[unknown]", "comm") comm_code[comm] = cc end
    parts[1] = cc
    for i = 1, n do
      local f = frames[i]
      local loc, new = locate(f)
      local c
      if new then
        c = intern(label(f), f.kind)
        loc_code[loc] = c
      else
        c = loc_code[loc]
      end
      parts[n - i + 2] = c
    end
    local key = concat(parts, "", 1, n + 1)
    local k = counts[key]
    if not k then keys[#keys + 1] = key k = 0 end
    counts[key] = k + e.count
    total = total + e.count
  end
  sort(keys)

  -- The walk. path[d] = name at depth d (1 = comm), start[d] = where it opened. Nodes
  -- come out children first (post-order).
  local nd, nname, nx, nw = {}, {}, {}, {}
  local nn, pruned, deepest = 0, 0, 0
  local path, start, plen = {}, {}, 0
  local x = 0
  local function close_to(depth)
    for d = plen, depth + 1, -1 do
      local w = x - start[d]
      if w >= min_samples then
        nn = nn + 1
        nd[nn], nname[nn], nx[nn], nw[nn] = d, path[d], start[d], w
      else
        pruned = pruned + 1
      end
    end
    if plen > depth then plen = depth end
  end
  local function name_at(key, d)
    if width == 2 then
      local a, b = byte(key, 2 * d - 1, 2 * d)
      return a * 256 + b
    end
    local a, b, c = byte(key, 3 * d - 2, 3 * d)
    return a * 65536 + b * 256 + c
  end
  for _, key in ipairs(keys) do
    local len = #key / width
    local common = 0
    for d = 1, math.min(len, plen) do
      if path[d] ~= name_at(key, d) then break end
      common = d
    end
    close_to(common)
    for d = common + 1, len do path[d], start[d] = name_at(key, d), x end
    plen = len
    if len > deepest then deepest = len end
    x = x + counts[key]
  end
  close_to(0)

  -- Name order: rank of each name id.
  local order, rank = {}, {}
  for i = 1, #names do order[i] = i end
  sort(order, function(a, b) return names[a] < names[b] end)
  for r, id in ipairs(order) do rank[id] = r end

  -- Children of each node from the post-order: when a node at depth d comes, the nodes
  -- of depth d+1 still waiting are its children. Sort keys: rank * 2^28 + node (exact in
  -- a double; plain numbers sort in C, without a Lua comparator).
  local kid_first, kid_count, kids = {}, {}, {}
  local stack, sp = {}, 0
  local tmp = {}
  local function take_children(d, into)
    local k = 0
    while sp > 0 and nd[stack[sp]] == d + 1 do
      k = k + 1
      local c = stack[sp]
      tmp[k] = rank[nname[c]] * 268435456 + c
      stack[sp] = nil
      sp = sp - 1
    end
    for j = k + 1, #tmp do tmp[j] = nil end
    sort(tmp)
    local first = #kids + 1
    for j = 1, k do kids[first + j - 1] = tmp[j] % 268435456 end
    kid_first[into], kid_count[into] = first, k
  end
  if nn >= 268435456 then error("svg: too many frames", 2) end
  for i = 1, nn do
    take_children(nd[i], i)
    sp = sp + 1
    stack[sp] = i
  end
  take_children(0, 0) -- the root's children: the processes

  -- Lay out top-down: children side by side from their parent's left edge.
  local function place(node, left)
    local first, k = kid_first[node], kid_count[node]
    for j = first, first + k - 1 do
      local c = kids[j]
      nx[c] = left
      place(c, left)
      left = left + nw[c]
    end
  end
  place(0, 0)
  return { depth = nd, name = nname, x = nx, w = nw, n = nn, names = names, kinds = kinds,
           total = total, pruned = pruned, deepest = deepest }
end

function M.tree(profile, min_samples)
  local ok, t = pcall(build_tree, profile, min_samples, 2)
  if ok then return t end
  if t ~= TOO_MANY then error(t, 0) end
  ok, t = pcall(build_tree, profile, min_samples, 3)
  if ok then return t end
  if t == TOO_MANY then error("svg: more than 2^24 distinct frame names", 2) end
  error(t, 0)
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
  -- Written in pieces of a few hundred KB: the whole file is never one string.
  local out, nout = {}, 0
  local function put(s)
    nout = nout + 1
    out[nout] = s
    if nout >= 2048 then fh:write(concat(out, "", 1, nout)) nout = 0 end
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

  -- Per name, once: its escaped title text and colour; per name and width in characters,
  -- once: its label (cut, then escaped: cutting escaped text could split an entity).
  local title_of, fill_of, cut_of = {}, {}, {}
  local pct = total > 0 and 100 / total or 0
  local char_w = FONT * 0.59
  local function frame(name, kind, samples, x, w, y)
    local title = title_of[name]
    if not title then
      title = xml(name)
      title_of[name], fill_of[name], cut_of[name] = title, colour(name, kind), {}
    end
    local nchars = floor((w - 6) / char_w)
    local text = ""
    if nchars >= 3 then
      if #name <= nchars then
        text = title
      else
        local cuts = cut_of[name]
        text = cuts[nchars]
        if not text then
          text = xml(name:sub(1, nchars - 2) .. "..")
          cuts[nchars] = text
        end
      end
    end
    if text == "" then
      put(fmt('<g><title>%s (%d samples, %.2f%%)</title><rect x="%.2f" y="%d" width="%.2f" ' ..
              'height="%d" fill="%s"/></g>\n',
              title, samples, samples * pct, x, y, w, FH - 1, fill_of[name]))
    else
      put(fmt('<g><title>%s (%d samples, %.2f%%)</title><rect x="%.2f" y="%d" width="%.2f" ' ..
              'height="%d" fill="%s"/><text x="%.2f" y="%.1f">%s</text></g>\n',
              title, samples, samples * pct, x, y, w, FH - 1, fill_of[name], x + 3,
              y + FH - 4.5, text))
    end
  end
  local base = H - BOTTOM - FH -- y of the root
  frame("all", "comm", total, PAD, total * scale, base)
  local names, kinds, depth_of, name_of, xs, ws = t.names, t.kinds, t.depth, t.name, t.x, t.w
  for i = 1, t.n do
    local id = name_of[i]
    frame(names[id], kinds[id], ws[i], PAD + xs[i] * scale, ws[i] * scale, base - depth_of[i] * FH)
  end
  put("</g>\n")
  if total == 0 then
    put(fmt('<text x="%d" y="%d" text-anchor="middle">no samples</text>\n', W / 2, base - FH))
  end
  put("</svg>\n")
  fh:write(concat(out, "", 1, nout))
  return t.n + 1
end

return M
