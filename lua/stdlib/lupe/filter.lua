-- The filter language: which samples a session keeps.
--
--   pid == 42            comm ~ 'ngin*'        exe ~ '/usr/bin/*'
--   cgroup ~ 'system.slice/*'                  frame ~ 'malloc'      module ~ 'libc*'
--   service ~ 'shop-*'   (the APM agent's service name; '' for processes without one)
--   kernel               (the stack has kernel frames)
--   not, and, or, ( )    pid != 1, pid < 100, ...
-- ~ and !~ match shell-style globs (* any run, ? one character) against the whole value;
-- frame and module match if any frame does. Strings are quoted with ' or ".
--
-- local f = assert(filter.compile("comm ~ 'ngin*' and not kernel"))
-- f.match(entry)   -- entry: {pid, comm, frames = {{name, module, kind}, ...}}
-- f.pids()         -- a pid list BPF can enforce (every match has one of them), or nil
-- f.bpf()          -- what BPF can enforce before any stack work: {pids = {...},
--                  -- comms = {"nginx", "ngin*"}, cgroups = {"system.slice"}}, each a
--                  -- necessary condition of a match (a superset), each part optional
-- A syntax error returns nil and "filter:COL: expected X, found Y".
local lpeg = require "lpeg"
local ffi = require "ffi"

local M = {}
local P, R, S, C, Ct, Cp = lpeg.P, lpeg.R, lpeg.S, lpeg.C, lpeg.Ct, lpeg.Cp
local ipairs, tonumber, type, concat, io_open = ipairs, tonumber, type, table.concat, io.open
local next = next
local setmetatable, format = setmetatable, string.format

-- Tokens, compiled once: each is {kind, text, col}.
local space = S(" \t\r\n") ^ 0
local function tok(kind, patt)
  return Ct(Cp() * lpeg.Cc(kind) * C(patt)) / function(t) return { kind = t[2], text = t[3], col = t[1] } end
end
local ident = (R("az", "AZ") + "_") * (R("az", "AZ", "09") + "_") ^ 0
local number = R("09") ^ 1
local quoted = P("'") * (1 - P("'")) ^ 0 * P("'") + P('"') * (1 - P('"')) ^ 0 * P('"')
local op = P("==") + P("!=") + P("!~") + P("<=") + P(">=") + S("~<>")
local token = tok("number", number) + tok("string", quoted) + tok("name", ident) + tok("op", op)
  + tok("(", P("(")) + tok(")", P(")"))
local lexer = Ct((space * token) ^ 0) * space * Cp()

local FIELDS = { pid = "number", comm = "string", exe = "string", cgroup = "string",
                 frame = "string", module = "string", service = "string" }
local KEYWORDS = { ["and"] = true, ["or"] = true, ["not"] = true, kernel = true }

-- Glob -> matcher of whole values, made once per comparison when a filter is compiled. Not
-- a Lua pattern: its backtracking takes exponential time in the number of stars when a
-- value does not match (14 stars: ~25 s per value, found by fuzz_filter). This one keeps a
-- single backtrack point, the last star: at most (glob length x value length) steps.
local byte = string.byte
local function glob(g)
  g = g:gsub("%*%*+", "*")
  local gl = #g
  return function(s)
    local gi, si, sl, star, mark = 1, 1, #s, 0, 0
    while si <= sl do
      local c = byte(g, gi)
      if c == 42 then                                   -- '*': remember, match nothing yet
        star, mark, gi = gi, si, gi + 1
      elseif c ~= nil and (c == 63 or c == byte(s, si)) then  -- '?' or the same byte
        gi, si = gi + 1, si + 1
      elseif star > 0 then                              -- let the last star take one more
        mark = mark + 1
        gi, si = star + 1, mark
      else
        return false
      end
    end
    while byte(g, gi) == 42 do gi = gi + 1 end
    return gi > gl
  end
end
M._glob = glob   -- for the spec

-- Per-pid facts read from /proc once (a filter runs per unique trace, not per sample).
ffi.cdef [[ long readlink(const char *path, char *buf, size_t bufsiz); ]]
local linkbuf = ffi.new("char[4096]")

local exe_cache, cgroup_cache = {}, {}
local function exe_of(pid)
  local v = exe_cache[pid]
  if v == nil then
    local n = ffi.C.readlink("/proc/" .. pid .. "/exe", linkbuf, 4096)
    v = n > 0 and ffi.string(linkbuf, n) or ""
    exe_cache[pid] = v
  end
  return v
end

local function cgroup_of(pid)
  local v = cgroup_cache[pid]
  if v == nil then
    -- The cgroup v2 line is "0::/system.slice/x.service"; the leading slash is dropped.
    local f = io_open("/proc/" .. pid .. "/cgroup")
    v = ""
    if f then
      for line in f:lines() do
        local path = line:match("^0::/(.*)$")
        if path then v = path break end
      end
      f:close()
    end
    cgroup_cache[pid] = v
  end
  return v
end

local function value_of(field, e)
  if field == "pid" then return e.pid end
  if field == "comm" then return e.comm end
  if field == "exe" then return e.exe or exe_of(e.pid) end
  if field == "cgroup" then return e.cgroup or cgroup_of(e.pid) end
  if field == "service" then return e.service or "" end
end

local function compare(opname, a, b)
  if opname == "==" then return a == b end
  if opname == "!=" then return a ~= b end
  if opname == "<" then return a < b end
  if opname == ">" then return a > b end
  if opname == "<=" then return a <= b end
  if opname == ">=" then return a >= b end
end

-- Builds a predicate for one comparison.
local function comparison(field, opname, value)
  if field == "frame" or field == "module" then
    local key = field == "frame" and "name" or "module"
    local want = opname == "~" or opname == "=="
    local pat = (opname == "~" or opname == "!~") and glob(value) or nil
    return function(e)
      for _, f in ipairs(e.frames or {}) do
        local v = f[key]
        if v and (pat and pat(v) or v == value) then return want end
      end
      return not want
    end
  end
  if opname == "~" or opname == "!~" then
    local pat, want = glob(value), opname == "~"
    return function(e)
      local v = value_of(field, e)
      return (v ~= nil and pat(v)) == want
    end
  end
  return function(e)
    local v = value_of(field, e)
    return v ~= nil and compare(opname, v, value)
  end
end

local function has_kernel(e)
  for _, f in ipairs(e.frames or {}) do
    if f.kind == "kernel" then return true end
  end
  return false
end

-- ---- what BPF can enforce ---------------------------------------------------------
-- Each node may carry bpf = {pids, comms, cgroups}: lists such that every entry the node
-- matches has one of them (pid, thread comm glob, cgroup directory at or above its
-- cgroup). BPF then drops what has none, and the whole expression still decides the rest.
local COMM_LEN = 16

-- A comm glob BPF can match (an LPM trie over the comm bytes): "lit" or "lit*".
local function comm_pushable(glob_text, exact)
  if exact then
    return not glob_text:find("[%*%?]") and #glob_text < COMM_LEN
  end
  local lit = glob_text:match("^([^%*%?]*)%*?$")
  return lit ~= nil and #lit < COMM_LEN
end

-- The deepest cgroup directory every match of the glob lies in or below; nil for the root.
local function cgroup_dir(glob_text, exact)
  local first = exact and #glob_text + 1 or (glob_text:find("[%*%?]") or #glob_text + 1)
  local dir
  if first > #glob_text then dir = glob_text
  else dir = glob_text:sub(1, first - 1):match("^(.*)/[^/]*$") end
  if dir then dir = dir:gsub("/+$", "") end
  if dir == nil or dir == "" then return nil end
  return dir
end

local function union(a, b)
  if not (a and b) then return nil end
  local out, seen = {}, {}
  for _, l in ipairs({ a, b }) do
    for _, v in ipairs(l) do
      if not seen[v] then seen[v] = true out[#out + 1] = v end
    end
  end
  return out
end

local function intersect(a, b)
  if not a then return b end
  if not b then return a end
  local inb, out = {}, {}
  for _, v in ipairs(b) do inb[v] = true end
  for _, v in ipairs(a) do if inb[v] then out[#out + 1] = v end end
  return out
end

local KINDS = { "pids", "comms", "cgroups" }

local function bpf_or(a, b)
  if not (a and b) then return nil end
  local out = {}
  for _, k in ipairs(KINDS) do out[k] = union(a[k], b[k]) end
  return next(out) and out or nil
end

local function bpf_and(a, b)
  if not a then return b end
  if not b then return a end
  local out = {}
  -- Pids intersect exactly; for globs and directories either side's list is enough.
  out.pids = intersect(a.pids, b.pids)
  out.comms = a.comms or b.comms
  out.cgroups = a.cgroups or b.cgroups
  return out
end

-- Recursive descent over the tokens; errors carry the column and what was expected.
local Parser = {}
Parser.__index = Parser

function Parser:peek() return self.toks[self.i] end

function Parser:fail(expected)
  local t = self:peek()
  local found = t and format("'%s'", t.text) or "end of input"
  local col = t and t.col or self.len + 1
  error({ msg = format("filter:%d: expected %s, found %s", col, expected, found) }, 0)
end

function Parser:accept(kind, text)
  local t = self:peek()
  if t and t.kind == kind and (text == nil or t.text == text) then
    self.i = self.i + 1
    return t
  end
end

-- Each node: {fn = predicate, pids = list or nil (a pid set every match belongs to)}.
function Parser:expr()
  local left = self:term()
  while self:accept("name", "or") do
    local right, l = self:term(), left
    local pids
    if l.pids and right.pids then
      pids = {}
      for _, p in ipairs(l.pids) do pids[#pids + 1] = p end
      for _, p in ipairs(right.pids) do pids[#pids + 1] = p end
    end
    left = { fn = function(e) return l.fn(e) or right.fn(e) end, pids = pids,
             bpf = bpf_or(l.bpf, right.bpf) }
  end
  return left
end

function Parser:term()
  local left = self:factor()
  while self:accept("name", "and") do
    local right, l = self:factor(), left
    left = { fn = function(e) return l.fn(e) and right.fn(e) end, pids = l.pids or right.pids,
             bpf = bpf_and(l.bpf, right.bpf) }
  end
  return left
end

function Parser:factor()
  if self:accept("name", "not") then
    local inner = self:factor()
    return { fn = function(e) return not inner.fn(e) end }
  end
  if self:accept("(") then
    local inner = self:expr()
    if not self:accept(")") then self:fail("')'") end
    return inner
  end
  if self:accept("name", "kernel") then return { fn = has_kernel } end
  local t = self:peek()
  if not t or t.kind ~= "name" or KEYWORDS[t.text] then
    self:fail("a field (pid, comm, exe, cgroup, frame, module, service), 'kernel', 'not' or '('")
  end
  local ftype = FIELDS[t.text]
  if not ftype then
    self:fail("a field (pid, comm, exe, cgroup, frame, module, service), 'kernel', 'not' or '('")
  end
  self.i = self.i + 1
  local o = self:accept("op")
  if not o then self:fail("an operator (==, !=, ~, !~, <, >, <=, >=)") end
  local textual = o.text == "~" or o.text == "!~"
  if ftype == "number" and textual then
    self.i = self.i - 1
    self:fail("==, !=, <, >, <= or >= (pid is a number)")
  elseif ftype == "string" and not (textual or o.text == "==" or o.text == "!=") then
    self.i = self.i - 1
    self:fail("==, !=, ~ or !~ (" .. t.text .. " is a string)")
  end
  local v
  if ftype == "number" then
    local n = self:accept("number")
    if not n then self:fail("a number") end
    v = tonumber(n.text)
  else
    local s = self:accept("string")
    if not s then self:fail("a quoted string") end
    v = s.text:sub(2, -2)
  end
  local node = { fn = comparison(t.text, o.text, v) }
  if t.text == "pid" and o.text == "==" then node.pids = { v } node.bpf = { pids = { v } } end
  if (o.text == "==" or o.text == "~") and t.text == "comm" and comm_pushable(v, o.text == "==") then
    node.bpf = { comms = { v } }
  elseif (o.text == "==" or o.text == "~") and t.text == "cgroup" then
    local dir = cgroup_dir(v, o.text == "==")
    if dir then node.bpf = { cgroups = { dir } } end
  end
  return node
end

local compiled = setmetatable({}, { __mode = "v" })

-- Compiles src once (cached). Returns a filter, or nil and a message naming the column.
function M.compile(src)
  if type(src) ~= "string" then error("filter.compile: expected a string", 2) end
  local hit = compiled[src]
  if hit then return hit end
  local toks, stop = lexer:match(src)
  if stop <= #src then
    return nil, format("filter:%d: unexpected character '%s'", stop, src:sub(stop, stop))
  end
  local p = setmetatable({ toks = toks, i = 1, len = #src }, Parser)
  local ok, node = pcall(function()
    if #toks == 0 then p:fail("an expression") end
    local n = p:expr()
    if p:peek() then p:fail("'and', 'or' or the end") end
    return n
  end)
  if not ok then
    if type(node) == "table" then return nil, node.msg end
    error(node, 0)
  end
  local pids, pushed = node.pids, node.bpf or {}
  local f = {
    source = src,
    match = node.fn,
    pids = function() return pids end,
    bpf = function() return pushed end,
  }
  compiled[src] = f
  return f
end

-- For messages: the pid list as text.
function M.describe_pids(pids)
  if not pids then return "none" end
  local t = {}
  for i, p in ipairs(pids) do t[i] = tostring(p) end
  return concat(t, ",")
end

return M
