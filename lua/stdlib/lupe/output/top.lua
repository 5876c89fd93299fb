-- A readable summary: where the time went (self and total, by function), and by process.
local output = require "lupe.output"

local M = {}
local label, sort, ipairs, pairs, fmt = output.label, table.sort, ipairs, pairs, string.format

local function ranked(t)
  local list = {}
  for k, v in pairs(t) do list[#list + 1] = { k, v } end
  sort(list, function(a, b) if a[2] ~= b[2] then return a[2] > b[2] end return a[1] < b[1] end)
  return list
end

local function where(f)
  if f.kind == "native" and f.name and f.module then return f.module end
  if f.kind == "kernel" then return f.module or "[kernel]" end
  return ""
end

function M.write(profile, fh, opts)
  opts = opts or {}
  local n = opts.top or 25
  local total, self_, incl, mods, procs, services = 0, {}, {}, {}, {}, nil
  for _, e in ipairs(profile.entries) do
    local c = e.count
    total = total + c
    local frames = e.frames
    local seen = {}
    for i, f in ipairs(frames) do
      local name = label(f)
      mods[name] = mods[name] or where(f)
      if i == 1 then self_[name] = (self_[name] or 0) + c end
      if not seen[name] then seen[name] = true incl[name] = (incl[name] or 0) + c end
    end
    if #frames == 0 then self_["[no stack]"] = (self_["[no stack]"] or 0) + c end
    local pk = fmt("%s (%d)", e.comm, e.pid)
    procs[pk] = (procs[pk] or 0) + c
    if e.service then
      services = services or {}
      services[e.service] = (services[e.service] or 0) + c
    end
  end
  local st = profile.stats
  fh:write(fmt("lupe: %d samples in %.1f s at %d Hz on %d CPUs (%s)\n", total,
               profile.duration or 0, profile.frequency or 0, st.ncpus or 0,
               output.counts_summary(st)))
  if total == 0 then
    fh:write("no samples: nothing ran on the sampled CPUs, or the target was idle\n")
    return
  end
  local function pct(v) return 100 * v / total end
  fh:write(fmt("\n%7s %7s  %-50s %s\n", "self%", "total%", "function", "module"))
  for i, kv in ipairs(ranked(self_)) do
    if i > n then break end
    fh:write(fmt("%6.2f%% %6.2f%%  %-50s %s\n", pct(kv[2]), pct(incl[kv[1]] or kv[2]), kv[1],
                 mods[kv[1]] or ""))
  end
  fh:write(fmt("\n%7s  %s\n", "share", "process (pid)"))
  for i, kv in ipairs(ranked(procs)) do
    if i > math.min(n, 10) then break end
    fh:write(fmt("%6.2f%%  %s\n", pct(kv[2]), kv[1]))
  end
  -- Only when APM agents named services: the summary of other profiles stays as it was.
  if services then
    fh:write(fmt("\n%7s  %s\n", "share", "service.name"))
    for i, kv in ipairs(ranked(services)) do
      if i > math.min(n, 10) then break end
      fh:write(fmt("%6.2f%%  %s\n", pct(kv[2]), kv[1]))
    end
  end
end

return M
