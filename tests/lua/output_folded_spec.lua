-- folded.write (the fast path, C buffers) against a plain reference written here from the
-- format's definition: same bytes, to a Lua file and to any object with :write.
local folded = require "lupe.output.folded"
local output = require "lupe.output"
local u64 = require "lupe.u64"

-- The definition: one line per (cleaned comm, stack) in first-seen order, root first,
-- labels as output.label, ";" and newlines replaced, counts summed. Stacks are equal when
-- their frames are: native and kernel frames by module and address, others by kind, name
-- and address (two unknown frames at different addresses are different frames).
local function reference(profile)
  local order, lines, sums = {}, {}, {}
  local function clean(s) return (s:gsub("[;\n]", "_")) end
  for _, e in ipairs(profile.entries) do
    local c = clean(e.comm ~= "" and e.comm or "[unknown]")
    local parts, key = { c }, { c }
    for i = #e.frames, 1, -1 do
      local f = e.frames[i]
      parts[#parts + 1] = clean(output.label(f))
      local id = (f.kind == "native" or f.kind == "kernel") and (f.module or "")
                 or (tostring(f.kind) .. "\0" .. (f.name or ""))
      key[#key + 1] = id .. "@" .. output.hex(f.addr)
    end
    key = table.concat(key, "\1")
    if not sums[key] then
      order[#order + 1] = key
      lines[key] = table.concat(parts, ";")
      sums[key] = 0
    end
    sums[key] = sums[key] + e.count
  end
  local out = {}
  for i, key in ipairs(order) do out[i] = ("%s %d\n"):format(lines[key], sums[key]) end
  return table.concat(out)
end

-- A random profile: fresh frame tables per entry (as a session's), repeated stacks of
-- other pids, frames without symbols, kernel frames, separators in names, empty stacks,
-- and one very deep stack with very long names (longer than the writer's buffer).
local function random_profile(seed, n)
  math.randomseed(seed)
  local entries = {}
  local function frame(k)
    local kind = ({ "native", "native", "kernel", "unknown", "error" })[k % 5 + 1]
    if kind == "kernel" then
      return { kind = kind, name = "kf" .. k, module = "[kernel]",
               addr = u64.parse(("0xffffffff81%06x"):format(k)) }
    end
    return { kind = kind, name = (k % 7 ~= 0) and ("fn;" .. k) or nil,
             module = "lib" .. (k % 3) .. ".so", addr = u64.of(0x1000 + k * 16) }
  end
  local stacks = {}
  for i = 1, n do
    local ks
    if i > 3 and math.random(3) == 1 then
      ks = stacks[math.random(#stacks)]
    else
      ks = {}
      for d = 1, math.random(0, 12) do ks[d] = math.random(60) end
      stacks[#stacks + 1] = ks
    end
    local frames = {}
    for d, k in ipairs(ks) do frames[d] = frame(k) end
    entries[i] = { count = math.random(5), pid = math.random(4), comm = ({ "a", "b;c", "" })[i % 3 + 1],
                   frames = frames }
  end
  local deep = {}
  for d = 1, 128 do deep[d] = { kind = "native", name = ("x"):rep(20000) .. d, addr = u64.of(d) } end
  entries[#entries + 1] = { count = 2, pid = 9, comm = "deep", frames = deep }
  return { entries = entries }
end

describe("lupe.output.folded.write", function()
  it("writes what the format's definition says, to any :write object", function()
    for seed = 1, 5 do
      local p = random_profile(seed, 400)
      local got = {}
      local n = folded.write(p, { write = function(self, s) got[#got + 1] = s return self end })
      local want = reference(p)
      assert.are.equal(want, table.concat(got))
      assert.are.equal(select(2, want:gsub("\n", "")), n)
    end
  end)

  it("writes the same bytes to a Lua file", function()
    local p = random_profile(7, 300)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write("head\n")               -- what came before stays before
    folded.write(p, f)
    f:close()
    f = assert(io.open(path, "rb"))
    local text = f:read("*a")
    f:close()
    os.remove(path)
    assert.are.equal("head\n" .. reference(p), text)
  end)

  it("merges by trace hash when entries carry one, as lines() does", function()
    local f1 = { kind = "native", name = "main", addr = u64.of(1) }
    local p = { entries = {
      { count = 1, pid = 1, comm = "x", hash = "h1", frames = { f1 } },
      { count = 2, pid = 2, comm = "x", hash = "h1", frames = { f1 } },
      { count = 4, pid = 2, comm = "y", hash = "h1", frames = { f1 } },
    } }
    local got = {}
    folded.write(p, { write = function(self, s) got[#got + 1] = s return self end })
    assert.are.equal("x;main 3\ny;main 4\n", table.concat(got))
    assert.are.same({ "x;main 3", "y;main 4" }, folded.lines(p))
  end)
end)
