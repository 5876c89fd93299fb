-- Output formats are Lua modules: lupe.output.get("folded").write(profile, file).
-- Each format module has write(profile, fh, opts) where fh has :write (a file or
-- io.stdout). Every format carries the session's counts (M.counts) somewhere it allows.
local bit = require "bit"

local M = {}
local tohex, require, pcall, type, tonumber, ipairs = bit.tohex, require, pcall, type, tonumber, ipairs

M.formats = { "folded", "top", "pprof", "speedscope", "svg", "json" }

function M.get(name)
  if type(name) ~= "string" or not name:match("^[%w_]+$") then return nil, "bad format name" end
  local ok, mod = pcall(require, "lupe.output." .. name)
  if not ok then
    -- A format that exists but fails to load says why; only a missing one is "unknown".
    if not tostring(mod):find("module 'lupe.output." .. name .. "' not found", 1, true) then
      return nil, ("format '%s' failed to load: %s"):format(name, tostring(mod))
    end
    return nil, ("unknown format '%s' (formats: %s)"):format(name, table.concat(M.formats, ", "))
  end
  return mod
end

local function hex(v)
  -- Strip leading zeros: module+0x1139, not module+0x0000000000001139.
  local h = tohex(v, 16):gsub("^0+", "")
  return "0x" .. (h == "" and "0" or h)
end
M.hex = hex

-- One frame's label, as flame graphs show it: kernel frames end in _[k]; a native frame
-- without a symbol is module+0xADDR (its ELF address, what addr2line -e module takes).
function M.label(f)
  local kind = f.kind
  if kind == "kernel" then
    return (f.name or hex(f.addr)) .. "_[k]"
  elseif kind == "native" then
    if f.name then return f.name end
    return (f.module or "[unknown]") .. "+" .. hex(f.addr)
  elseif kind == "error" then
    return f.name or "[error]"
  end
  return "[unknown]"
end

-- The session's target in words: system, pids=1,2, command=make -j4, cgroup=/sys/...
function M.describe_target(t)
  if t == nil then return "system" end
  if type(t) ~= "table" then return tostring(t) end
  if t.pids then return "pids=" .. table.concat(t.pids, ",") end
  if t.command then return "command=" .. table.concat(t.command, " ") end
  if t.cgroup then return "cgroup=" .. tostring(t.cgroup) end
  return "?"
end

-- Every count of a session that says what it dropped or could not resolve, in a fixed
-- order; formats write them all (pprof comments, the JSON header, the SVG title...).
M.count_names = {
  "samples", "lost", "filtered", "idle", "kernel_trunc", "user_trunc", "user_stack_err",
  "kernel_stack_err", "unknown_frames", "events_lost", "bpf_bad_records", "symbolize_errors",
}

-- { {name, value}, ... } in count_names order; a count the stats lack is 0. A replay of a
-- damaged or cut recording adds replay_errors last (only then, so that a replay of a
-- whole one writes what live wrote): its counts stop where the recording does.
function M.counts(stats)
  local list = {}
  for i, k in ipairs(M.count_names) do list[i] = { k, tonumber(stats and stats[k]) or 0 } end
  local bad = tonumber(stats and stats.replay_errors) or 0
  if bad > 0 then list[#list + 1] = { "replay_errors", bad } end
  return list
end

-- "samples=N lost=N ... truncated=N ..." with every count, for one-line places.
function M.counts_summary(stats)
  local parts, c = {}, M.counts(stats)
  for i, kv in ipairs(c) do parts[i] = ("%s=%d"):format(kv[1], kv[2]) end
  parts[#parts + 1] = ("truncated=%d"):format(c[5][2] + c[6][2])
  return table.concat(parts, " ")
end

-- The same counts as the members of a JSON object: "samples":N,...,"truncated":N.
function M.counts_json(stats)
  local parts, c = {}, M.counts(stats)
  for i, kv in ipairs(c) do parts[i] = ('"%s":%d'):format(kv[1], kv[2]) end
  parts[#parts + 1] = ('"truncated":%d'):format(c[5][2] + c[6][2])
  return table.concat(parts, ",")
end

-- A number that stands for a 64-bit address exactly, for use as a table key: the value
-- itself below 2^53, minus its distance to 2^64 for kernel addresses (the top of the
-- space), a hex string for anything else. A uint64_t cdata is no key: each is distinct.
local TWO53 = 0x20000000000000ULL
local function addr_key(a)
  if type(a) ~= "cdata" then return a or false end
  if a < TWO53 then return tonumber(a) end
  local neg = -a
  if neg < TWO53 then return -tonumber(neg) end
  return hex(a)
end
M.addr_key = addr_key

-- What makes two frames the same frame: the table of ids its key lives in (native and
-- kernel frames: per module; others: per kind and name) and its key there (the address).
-- Writers that number frames inline (folded, svg) call it as the locator does: LuaJIT
-- compiles the call into their loops.
function M.frame_slot(by_module, others, f)
  local kind = f.kind
  local ids
  if kind == "native" or kind == "kernel" then
    local mod = f.module or ""
    ids = by_module[mod]
    if not ids then ids = {} by_module[mod] = ids end
  else
    local ns = (kind or "unknown") .. "\0" .. (f.name or "")
    ids = others[ns]
    if not ids then ids = {} others[ns] = ids end
  end
  return ids, addr_key(f.addr)
end
local frame_slot = M.frame_slot

-- Dense ids for distinct frames (module and address; an error or unknown frame by its
-- kind and reason), so formats work per distinct frame rather than per frame of stacks:
--   local locate, frames = output.locator()
--   local id, new = locate(f)    -- 1, 2, ...; frames[id] is the first frame seen with it
-- No string is built per frame: a lookup costs two table reads and an address compare.
-- Native and kernel frames share the per-module tables: user addresses are below 2^47
-- (positive keys), kernel ones at the top of the space (negative keys).
function M.locator()
  local frames, by_module, others = {}, {}, {}
  local n = 0
  local function locate(f)
    local ids, key = frame_slot(by_module, others, f)
    local id = ids[key]
    if id then return id, false end
    n = n + 1
    frames[n] = f
    ids[key] = n
    return n, true
  end
  return locate, frames
end

return M
