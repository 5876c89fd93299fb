-- The process manager from Lua: which processes exist, what they map, which files those
-- are. lupe.procmgr.new{} makes a standalone manager whose BPF side is a recorder (for
-- tests and exploration); a session's manager writes real BPF maps.
--
--   local pm = lupe.procmgr.new{}
--   pm:synchronize(pid)                 -> true | nil, msg, errno
--   pm:mappings(pid)                    -> { {file_id, vaddr, length, bias, file_offset,
--                                             device, inode, path, deleted}, ... }
--   pm:pid_exit(pid [, ktime])          -> tracked?
--   pm:symbolization_complete(ktime)    -> processes released
--   pm.file_ids:get(host) / :set(host, file_id)
--   pm:notify_apm(raw, trace_hash, count) -> the APM agent's service name | nil
-- 64-bit fields are uint64_t cdata (exact); file IDs print as 32 hex digits.
local native = require("lupe.native").procmgr
local u64 = require "lupe.u64"
local bit = require "bit"

local M = {}
local from_c, to_c, tohex = u64.from_c, u64.to_c, bit.tohex
local setmetatable, ipairs, type, error = setmetatable, ipairs, type, error

-- File IDs -------------------------------------------------------------------------

local FileID = {}
FileID.__index = FileID

local function file_id(hi, lo)
  return setmetatable({ hi = hi, lo = lo }, FileID)
end

function FileID.__tostring(id)
  return tohex(id.hi, 16) .. tohex(id.lo, 16)
end

function FileID.__eq(a, b)
  return a.hi == b.hi and a.lo == b.lo
end

-- The 64-bit ID BPF maps use.
function FileID:host()
  return self.hi
end

function FileID:to_c()
  return { to_c(self.hi), to_c(self.lo) }
end

local function file_id_from_c(t)
  if t == nil then return nil end
  return file_id(from_c(t[1]), from_c(t[2]))
end

-- Parses 32 hex digits.
function M.file_id(s)
  if type(s) ~= "string" or not s:match("^%x+$") or #s ~= 32 then
    error("file_id: expected 32 hex digits, got " .. tostring(s), 2)
  end
  return file_id(u64.parse("0x" .. s:sub(1, 16)), u64.parse("0x" .. s:sub(17)))
end

-- The file ID of a file on disk.
function M.file_id_of_file(path)
  local t, msg, errno = native.file_id_of_file(path)
  if not t then return nil, msg, errno end
  return file_id_from_c(t)
end

M.is_file_id = function(v) return getmetatable(v) == FileID end

-- Mappings -------------------------------------------------------------------------

local U64_FIELDS = { "vaddr", "length", "bias", "file_offset", "device", "inode" }

local function mapping_from_c(m)
  if m == nil then return nil end
  for _, k in ipairs(U64_FIELDS) do m[k] = from_c(m[k]) end
  m.file_id = file_id_from_c(m.file_id)
  return m
end

-- The manager ----------------------------------------------------------------------

local ProcMgr = {}
ProcMgr.__index = ProcMgr

local function host_of(v)
  if getmetatable(v) == FileID then return to_c(v.hi) end
  return to_c(v)
end

function ProcMgr:synchronize(pid)
  return self._pm:synchronize(pid)
end

function ProcMgr:pid_exit(pid, ktime)
  return self._pm:pid_exit(pid, ktime and to_c(ktime))
end

function ProcMgr:cleanup_pids()
  return self._pm:cleanup_pids()
end

function ProcMgr:symbolization_complete(ktime)
  return self._pm:symbolization_complete(to_c(ktime))
end

-- deltas: sorted { {address=, cfa_opcode=, cfa_param=, fp_opcode=, fp_param=, flags=}, ...}
function ProcMgr:add_synth_interval_data(id, deltas)
  local c = {}
  for i, d in ipairs(deltas) do
    c[i] = { address = to_c(d.address), cfa_opcode = d.cfa_opcode, cfa_param = d.cfa_param,
             fp_opcode = d.fp_opcode, fp_param = d.fp_param, flags = d.flags }
  end
  return self._pm:add_synth_interval_data(host_of(id), c)
end

function ProcMgr:mappings(pid)
  local ms, msg, errno = self._pm:mappings(pid)
  if not ms then return nil, msg, errno end
  for i = 1, #ms do mapping_from_c(ms[i]) end
  return ms
end

-- The mapping covering addr in pid, as it was at ktime (default: now).
function ProcMgr:find_mapping(pid, addr, ktime)
  return mapping_from_c(self._pm:find_mapping(pid, to_c(addr), ktime and to_c(ktime)))
end

function ProcMgr:processes()
  return self._pm:processes()
end

function ProcMgr:exe_refcount(id)
  return self._pm:exe_refcount(host_of(id))
end

function ProcMgr:stats()
  return self._pm:stats()
end

-- The recorder's log of BPF map operations (standalone managers only).
function ProcMgr:ebpf_calls(clear)
  local calls = self._pm:ebpf_calls(clear)
  for _, c in ipairs(calls) do
    c.host, c.vaddr, c.length, c.bias = from_c(c.host), from_c(c.vaddr), from_c(c.length), from_c(c.bias)
  end
  return calls
end

-- APM correlation (needs new{apm = true}, or a session's manager): tells raw.pid's APM
-- agent that the trace with this hash (a file ID object, or 32 hex digits) was sampled
-- count times in the transaction raw.tx_id (8 bytes) of trace raw.trace_id (16 bytes).
-- Never blocks; nothing is sent for a zero transaction or an agent without a socket.
-- Returns the agent's service name, or nil when the process has no agent.
function ProcMgr:notify_apm(raw, trace_hash, count)
  if type(raw) ~= "table" then error("notify_apm: raw must be a table {pid, trace_id, tx_id}", 2) end
  if type(trace_hash) == "string" then trace_hash = M.file_id(trace_hash) end
  if getmetatable(trace_hash) ~= FileID then error("notify_apm: trace_hash must be a file ID", 2) end
  return self._pm:notify_apm(raw, trace_hash:to_c(), count)
end

-- The APM registry's counters (sent, dropped, agents, ...), or nil without one.
function ProcMgr:apm_stats()
  return self._pm:apm_stats()
end

function ProcMgr:close()
  self._pm:close()
end

function ProcMgr:__tostring()
  return tostring(self._pm)
end

-- pm.file_ids: the file-ID mapper (host ID -> file ID).
local FileIDs = {}
FileIDs.__index = FileIDs

function FileIDs:get(host)
  return file_id_from_c(self._pm:file_id_get(host_of(host)))
end

function FileIDs:set(host, id)
  if getmetatable(id) ~= FileID then error("file_ids:set: expected a file ID", 2) end
  return self._pm:file_id_set(host_of(host), id:to_c())
end

-- opts: proc_root (tests), filter_error_frames, file_ids = "lru" (default) | "map",
-- lru_size, apm (true: find APM agents as processes are synchronized, for notify_apm).
function M.new(opts)
  local pm, msg, errno = native.new(opts)
  if not pm then return nil, msg, errno end
  return setmetatable({ _pm = pm, file_ids = setmetatable({ _pm = pm }, FileIDs) }, ProcMgr)
end

function M.ktime_now()
  return from_c(native.ktime_now())
end

return M
