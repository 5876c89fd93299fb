-- JSON Lines: one JSON object per line, for jq, scripts and log pipelines.
--   line 1   the session: {"format":"lupe-json","version":1,"frames":"leaf-first",
--            "frequency","duration","ncpus","target","counts":{samples, lost, filtered,
--            ..., truncated}}
--   then     one line per unique stack of one process:
--            {"comm","pid","count","hash",["service",]"frames":[{"function","module",
--            "file_id","address","kind"}, ...]}
--            "service" is the APM agent's service.name, present only when known.
-- Frames are LEAF FIRST (the sampled instruction first, as lupe keeps them), in every
-- line. "function" is the label folded writes (module+0xADDR without a symbol); "module"
-- and "file_id" are null when unknown; "address" is a hex string (64 bits do not fit a
-- JSON number exactly).
local output = require "lupe.output"
local codec = require("lupe.native").codec

local M = {}
local label, locator, json, hex = output.label, output.locator, codec.json, output.hex
local ipairs, fmt, type, unpack = ipairs, string.format, type, unpack

local function frame_json(f)
  local addr = f.addr
  return fmt('{"function":%s,"module":%s,"file_id":%s,"address":"%s","kind":%s}',
             json(label(f)), f.module and json(f.module) or "null",
             type(f.file_id) == "string" and json(f.file_id) or "null",
             addr and hex(addr) or "0x0", json(f.kind or "unknown"))
end

-- The header line's object (without newline).
function M.header(profile)
  local st = profile.stats or {}
  return fmt('{"format":"lupe-json","version":1,"frames":"leaf-first","frequency":%d,' ..
             '"duration":%.3f,"ncpus":%d,"target":%s,"counts":{%s}}',
             profile.frequency or 0, profile.duration or 0, st.ncpus or 0,
             json(output.describe_target(profile.target)), output.counts_json(st))
end

-- Each line goes out in one fh:write call of its pieces (the cached frame objects): no
-- line is ever built as one string.
function M.write(profile, fh)
  fh:write(M.header(profile), "\n")
  local locate = locator()
  local first, rest = {}, {}
  local pieces = {}
  for _, e in ipairs(profile.entries) do
    local frames = e.frames
    local n = #frames
    pieces[1] = fmt('{"comm":%s,"pid":%d,"count":%d,"hash":%s,%s"frames":[',
                    json(e.comm or ""), e.pid or 0, e.count, e.hash and json(e.hash) or "null",
                    e.service and '"service":' .. json(e.service) .. "," or "")
    for i = 1, n do
      local f = frames[i]
      local id, new = locate(f)
      if new then
        local o = frame_json(f)
        first[id], rest[id] = o, "," .. o
      end
      pieces[i + 1] = i == 1 and first[id] or rest[id]
    end
    pieces[n + 2] = "]}\n"
    -- unpack has a limit (a few thousand values): very deep stacks go in slices.
    for i = 1, n + 2, 4000 do fh:write(unpack(pieces, i, math.min(i + 3999, n + 2))) end
  end
  return #profile.entries
end

return M
