local repl = require "lupe.repl"

describe("lupe.repl", function()
  describe("pretty", function()
    it("writes scalars as Lua would read them back", function()
      assert.are.equal("42", repl.pretty(42))
      assert.are.equal("nil", repl.pretty(nil))
      assert.are.equal("true", repl.pretty(true))
      assert.are.equal('"a\\nb\\"c"', repl.pretty('a\nb"c'))
      -- The printed string reads back as the same value.
      local s = 'tab\there "q" \\ \0 end'
      assert.are.equal(s, loadstring("return " .. repl.pretty(s))())
    end)

    it("writes a table one entry a line, array part first, keys sorted", function()
      assert.are.equal('{\n  "x",\n  "y",\n  a = 1,\n  b = "two",\n  ["not id"] = false,\n}',
        repl.pretty({ "x", "y", b = "two", a = 1, ["not id"] = false }))
      assert.are.equal("{}", repl.pretty({}))
    end)

    it("shows nested tables on one line, deeper ones by their size", function()
      local out = repl.pretty({ inner = { 1, 2, k = { 1, 2, 3 } } })
      assert.are.equal("{\n  inner = { 1, 2, k = {…3} },\n}", out)
    end)

    it("uses __tostring where a value has one", function()
      local v = setmetatable({}, { __tostring = function() return "<obj>" end })
      assert.are.equal("<obj>", repl.pretty(v))
      assert.are.equal("{\n  o = <obj>,\n}", repl.pretty({ o = v }))
    end)

    it("cuts long tables and says how much is left", function()
      local t = {}
      for i = 1, 250 do t[i] = i end
      local out = repl.pretty(t)
      local n = select(2, out:gsub("\n", "\n"))
      assert.are.equal(102, n) -- "{", 100 entries, the note; "}" ends the last line
      assert.matches("%-%- 150 more", out)
    end)
  end)

  describe("complete", function()
    local env
    before_each(function()
      local obj = setmetatable({ field = 1 }, { __index = { run = function() end, stats = function() end } })
      env = setmetatable({
        lupe = { session = function() end, version = "1", output = {}, sessions_seen = 0,
                 filter_compile = function() end },
        s = obj, stats = function() end,
      }, { __index = _G })
    end)

    it("completes a field of a table, with ( after a function", function()
      local insert, cands = repl.complete("lupe.fil", env)
      assert.are.equal("ter_compile(", insert)
      assert.are.same({ "lupe.filter_compile" }, cands)
      assert.are.equal("sion", (repl.complete("lupe.ver", env)))
    end)

    it("completes up to the common prefix and lists the candidates", function()
      local insert, cands = repl.complete("x = lupe.se", env)
      assert.are.equal("ssion", insert)
      assert.are.same({ "lupe.session", "lupe.sessions_seen" }, cands)
    end)

    it("adds a dot after a table, and completes globals and helpers", function()
      assert.are.equal("t.", (repl.complete("print(lupe.outpu", env)))
      assert.are.equal("e.", (repl.complete("tabl", env)))
      local insert, cands = repl.complete("sta", env)
      assert.are.equal("ts(", insert)
      assert.are.same({ "stats" }, cands)
    end)

    it("offers methods after a colon, from the object's metatable", function()
      local insert, cands = repl.complete("s:", env)
      assert.are.equal("", insert)
      assert.are.same({ "s:run", "s:stats" }, cands)
      assert.are.equal("un(", (repl.complete("s:r", env)))
    end)

    it("offers nothing for unknown paths or non-tables", function()
      assert.are.same({ "", {} }, { repl.complete("nosuch.x", env) })
      assert.are.same({ "", {} }, { repl.complete("lupe.version.x", env) })
      assert.are.same({ "", {} }, { repl.complete("lupe.zzz", env) })
    end)
  end)

  describe("evaluate", function()
    local env
    before_each(function() env = setmetatable({}, { __index = _G }) end)

    it("returns an expression's values, and runs statements in env", function()
      local ok, r = repl.evaluate("1 + 1, 'a'", env)
      assert.is_true(ok)
      assert.are.same({ n = 2, 2, "a" }, r)
      ok, r = repl.evaluate("x = 5", env)
      assert.is_true(ok)
      assert.are.equal(0, r.n)
      assert.are.equal(5, rawget(env, "x"))
      assert.is_nil(rawget(_G, "x"))
    end)

    it("tells an incomplete chunk from a wrong one", function()
      local ok, msg, incomplete = repl.evaluate("for i = 1, 2 do", env)
      assert.is_false(ok)
      assert.is_true(incomplete, msg)
      ok, msg, incomplete = repl.evaluate("x = = 1", env)
      assert.is_false(ok)
      assert.is_false(incomplete, msg)
    end)

    it("reports a runtime error with the user's traceback only", function()
      local ok, msg = repl.evaluate("local function f() error('deep') end f()", env)
      assert.is_false(ok)
      assert.matches("stdin:1: deep", msg)
      assert.matches("in function 'f'", msg)
      assert.is_nil(msg:find("repl.lua", 1, true))
    end)
  end)

  describe("parse_args", function()
    it("reads -F, -p (repeated or listed) and --no-session", function()
      assert.are.same({ frequency = 99, session = true }, repl.parse_args({}))
      assert.are.same({ frequency = 49, session = false, pids = { 1, 2, 3 } },
        repl.parse_args({ "-F", "49", "--no-session", "-p", "1", "2", "-p", "3" }))
      assert.are.same({ frequency = 99, session = true, pids = { 4, 5 } },
        repl.parse_args({ "-p", "4,5" }))
    end)

    it("rejects what it does not know", function()
      assert.is_nil((repl.parse_args({ "-F", "x" })))
      assert.is_nil((repl.parse_args({ "-p" })))
      assert.is_nil((repl.parse_args({ "--what" })))
    end)
  end)
end)
