-- speedscope's file format (https://www.speedscope.app/file-format-schema.json): one JSON
-- document that speedscope opens as is.
--   shared.frames   one per distinct frame label and module: {"name", "file"}
--   profiles        one "sampled" profile per process, named "comm (pid)" (or "comm/comm2
--                   (pid)" after an exec, the name with more samples first; with
--                   " [service.name=S]" where an APM agent named the service), heaviest first;
--                   samples are frame-index arrays root first, weights their counts
--                   (unit "none"), or CPU time with opts.unit = "nanoseconds"
--   name            "lupe: " and the session's counts (speedscope shows it as the title);
--                   the same counts as numbers under the extra key "lupe"
local output = require "lupe.output"
local codec = require("lupe.native").codec
local native = require "lupe.native"

local M = {}
local label, locator, json = output.label, output.locator, codec.json
local ipairs, sort, concat, floor, min, fmt = ipairs, table.sort, table.concat, math.floor,
  math.min, string.format

M.schema = "https://www.speedscope.app/file-format-schema.json"

-- Accumulates output pieces and writes them in large strings.
local function writer(fh)
  local parts, n = {}, 0
  local w = {}
  function w.put(s)
    n = n + 1
    parts[n] = s
    if n >= 8192 then fh:write(concat(parts, "", 1, n)) n = 0 end
  end
  function w.flush()
    if n > 0 then fh:write(concat(parts, "", 1, n)) n = 0 end
  end
  return w
end

-- Entries grouped per pid, heaviest process first (ties by pid).
local function by_process(entries)
  local groups, list = {}, {}
  for _, e in ipairs(entries) do
    local pid = e.pid or 0
    local g = groups[pid]
    if not g then
      g = { pid = pid, comms = {}, total = 0, entries = {} }
      groups[pid] = g
      list[#list + 1] = g
    end
    local comm = e.comm or ""
    if not g.comms[comm] then g.comms[comm] = 0 g.comms[#g.comms + 1] = comm end
    g.comms[comm] = g.comms[comm] + e.count
    g.entries[#g.entries + 1] = e
    g.total = g.total + e.count
    g.service = e.service or g.service
  end
  sort(list, function(a, b)
    if a.total ~= b.total then return a.total > b.total end
    return a.pid < b.pid
  end)
  -- A process that exec'd has several names: the one with the most samples first.
  for _, g in ipairs(list) do
    local c = g.comms
    sort(c, function(a, b)
      if c[a] ~= c[b] then return c[a] > c[b] end
      return a < b
    end)
  end
  return list
end

function M.write(profile, fh, opts)
  opts = opts or {}
  local unit = opts.unit or "none"
  if unit ~= "none" and unit ~= "nanoseconds" then
    error("speedscope: unit must be \"none\" or \"nanoseconds\"", 2)
  end
  local freq = profile.frequency or 0
  local period = (unit == "nanoseconds" and freq > 0) and 1e9 / freq or 1
  local st = profile.stats or {}
  local w = writer(fh)

  local locate = locator()
  local frame_of_loc, frame_ids, frames = {}, {}, {}
  local function frame_index(f)
    local loc, new = locate(f)
    if not new then return frame_of_loc[loc] end
    local name, file = label(f), f.module
    local key = name .. "\0" .. (file or "")
    local idx = frame_ids[key]
    if not idx then
      idx = #frames
      frames[idx + 1] = file and fmt('{"name":%s,"file":%s}', json(name), json(file))
                        or fmt('{"name":%s}', json(name))
      frame_ids[key] = idx
    end
    frame_of_loc[loc] = idx
    return idx
  end

  w.put(fmt('{"$schema":%s,"exporter":%s,"name":%s,"activeProfileIndex":0,' ..
            '"lupe":{"frequency":%d,"duration":%.3f,"ncpus":%d,"target":%s,"counts":{%s}},' ..
            '"profiles":[',
            json(M.schema), json("lupe " .. (native.version or "?")),
            json("lupe: " .. output.counts_summary(st)), freq, profile.duration or 0,
            st.ncpus or 0, json(output.describe_target(profile.target)), output.counts_json(st)))

  local stack = {}
  local groups = by_process(profile.entries)
  -- speedscope wants a profile to show: an empty profile gets one without samples.
  if #groups == 0 then groups[1] = { pid = 0, comms = { "no samples" }, entries = {} } end
  for gi, g in ipairs(groups) do
    local weights, end_value = {}, 0
    for i, e in ipairs(g.entries) do
      local wgt = unit == "none" and e.count or floor(e.count * period + 0.5)
      weights[i] = wgt
      end_value = end_value + wgt
    end
    w.put(fmt('%s{"type":"sampled","name":%s,"unit":"%s","startValue":0,"endValue":%.0f,' ..
              '"samples":[', gi > 1 and "," or "",
              json(fmt("%s (%d)%s", concat(g.comms, "/"), g.pid,
                       g.service and " [service.name=" .. g.service .. "]" or "")),
              unit, end_value))
    for i, e in ipairs(g.entries) do
      local fr = e.frames
      local n = #fr
      for j = 1, n do stack[n - j + 1] = frame_index(fr[j]) end
      w.put((i > 1 and ",[" or "[") .. concat(stack, ",", 1, n) .. "]")
    end
    w.put('],"weights":[')
    for i = 1, #weights, 4096 do
      w.put((i > 1 and "," or "") .. concat(weights, ",", i, min(i + 4095, #weights)))
    end
    w.put("]}")
  end
  w.put('],"shared":{"frames":[')
  for i = 1, #frames, 4096 do
    w.put((i > 1 and "," or "") .. concat(frames, ",", i, min(i + 4095, #frames)))
  end
  w.put("]}}\n")
  w.flush()
end

return M
