local args = require "lupe.args"
local h = require "helpers"

local function spec()
  return {
    name = "t", command = true,
    { "-F", "--frequency", key = "frequency", kind = "frequency", floor = true, default = 99 },
    { "-d", "--duration", key = "duration", kind = "number", min = 0.001 },
    { "-n", "--lines", key = "lines", kind = "integer", min = 1, default = 20 },
    { "-p", "--pid", key = "pids", kind = "pids" },
    { nil, "--filter", key = "filter", kind = "string" },
    { nil, "--no-kernel", key = "no_kernel", kind = "flag" },
    max_frequency = 1000,
  }
end

describe("lupe.args.parse", function()
  it("fills defaults and reads every kind", function()
    local o = assert(args.parse(spec(), { "-F", "499.7", "-d", "1.5", "-n", "3", "-p", "1,2",
      "-p", "7", "--filter", "not kernel", "--no-kernel" }))
    assert.are.same({ frequency = 499, duration = 1.5, lines = 3, pids = { 1, 2, 7 },
                      filter = "not kernel", no_kernel = true }, o)
    assert.are.same({ frequency = 99, lines = 20 }, assert(args.parse(spec(), {})))
  end)

  it("takes --long=value, also for a string that starts with '-'", function()
    local o = assert(args.parse(spec(), { "--frequency=10", "--filter=-x", "--lines=5" }))
    assert.are.equal(10, o.frequency)
    assert.are.equal("-x", o.filter)
    assert.are.equal(5, o.lines)
  end)

  it("rejects zero, negative and non-numbers with the option's name", function()
    local cases = {
      { { "-F", "0" }, "^%-F: expected a number >= 1, got '0'$" },
      { { "-F", "-5" }, "^%-F: expected a number >= 1, got '%-5'$" },
      { { "-F", "abc" }, "^%-F: expected a number >= 1, got 'abc'$" },
      { { "-F", "0x10" }, "^%-F: expected" },
      { { "-d", "-1" }, "^%-d: expected a number >= 0.001, got '%-1'$" },
      { { "-d", "inf" }, "^%-d: expected" },
      { { "-d", "nan" }, "^%-d: expected" },
      { { "-n", "-1" }, "^%-n: expected an integer >= 1, got '%-1'$" },
      { { "-n", "2.5" }, "^%-n: expected an integer >= 1, got '2.5'$" },
      { { "-p", "0" }, "^%-p: not a pid: '0'$" },
      { { "-p", "1,x" }, "^%-p: not a pid: 'x'$" },
      { { "-p", "1,,2" }, "^%-p: not a pid: ''$" },
      { { "-p", "-3" }, "^%-p: not a pid: '%-3'$" },
    }
    for _, c in ipairs(cases) do
      local o, err = args.parse(spec(), c[1])
      assert.is_nil(o, table.concat(c[1], " "))
      assert.matches(c[2], err)
    end
  end)

  it("names the kernel's limit for a frequency above it", function()
    local _, err = args.parse(spec(), { "-F", "1001" })
    assert.matches("1001 Hz is above the kernel's limit of 1000 Hz", err, 1, true)
    assert.truthy(err:find("perf_event_max_sample_rate", 1, true))
  end)

  it("does not take the next option as a string's value", function()
    local _, err = args.parse(spec(), { "--filter", "-d", "1" })
    assert.are.equal("option --filter needs a value", err)
    _, err = args.parse(spec(), { "-d" })
    assert.are.equal("option -d needs a value", err)
    _, err = args.parse(spec(), { "--filter=" })
    assert.are.equal("option --filter needs a value", err)
    _, err = args.parse(spec(), { "-F", "--" })
    assert.are.equal("option -F needs a value", err)
  end)

  it("rejects unknown options, stray words and values on flags", function()
    local _, err = args.parse(spec(), { "--bogus" })
    assert.are.equal("unknown option '--bogus' (see lupe t --help)", err)
    _, err = args.parse(spec(), { "word" })
    assert.are.equal("unexpected argument 'word' (see lupe t --help)", err)
    _, err = args.parse(spec(), { "--no-kernel=1" })
    assert.are.equal("--no-kernel takes no value", err)
  end)

  it("splits off the command after --, or at the first word with command = 'bare'", function()
    local o = assert(args.parse(spec(), { "-F", "9", "--", "make", "-j2" }))
    assert.are.same({ "make", "-j2" }, o.command)
    local _, err = args.parse(spec(), { "--" })
    assert.are.equal("-- must be followed by a command", err)
    local s = spec()
    s.command = "bare"
    o = assert(args.parse(s, { "-n", "2", "sleep", "-d", "1" }))
    assert.are.same({ "sleep", "-d", "1" }, o.command)
    s.command = nil
    _, err = args.parse(s, { "--", "true" })
    assert.matches("this command runs no COMMAND", err)
  end)

  it("reports --help before checking anything else", function()
    assert.are.same({ help = true }, args.parse(spec(), { "-F", "0x", "--help" }) or {})
    assert.are.same({ help = true }, args.parse(spec(), { "-h" }))
  end)
end)

describe("lupe.args helpers", function()
  it("tells a live pid from a missing one", function()
    local me = tonumber(io.open("/proc/self/stat"):read("*l"):match("^(%d+)"))
    assert.is_nil(args.check_pids({ 1 }))
    assert.is_true(args.any_alive({ 1 }))
    -- pid_max is at most 4194304: a larger pid never exists.
    assert.are.equal("no such process: 4194305", args.check_pids({ 1, 4194305 }))
    assert.is_false(args.any_alive({ 4194305 }))
    assert.is_true(me > 0)
    assert.is_nil(args.until_gone(nil))
    assert.is_true(args.until_gone({ 4194305 })())
    assert.is_false(args.until_gone({ 1 })())
  end)

  it("picks the format from the extension", function()
    local cases = { ["a.svg"] = "svg", ["a.SVG"] = "svg", ["a.pb.gz"] = "pprof",
      ["a.pprof"] = "pprof", ["a.speedscope.json"] = "speedscope", ["a.jsonl"] = "json",
      ["a.json"] = "folded", ["a.folded"] = "folded", ["a"] = "folded", ["a.gz"] = "folded" }
    for path, want in pairs(cases) do assert.are.equal(want, args.format_for(path), path) end
  end)

  it("reads the kernel's frequency limit from a file", function()
    local p = h.tmpname()
    h.write(p, "12345\n")
    assert.are.equal(12345, args.max_frequency(p))
    os.remove(p)
    assert.is_nil(args.max_frequency(p))
  end)
end)

describe("lupe.args.output", function()
  local dir
  before_each(function()
    dir = h.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
  end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  local function files()
    local p = io.popen("ls -A " .. dir)
    local list = {}
    for l in p:lines() do list[#list + 1] = l end
    p:close()
    table.sort(list)
    return list
  end

  it("keeps the old file until commit, then replaces it", function()
    h.write(dir .. "/a.folded", "old\n")
    local out = assert(args.output(dir .. "/a.folded"))
    out.fh:write("new\n")
    assert.are.equal("old\n", h.slurp(dir .. "/a.folded"))
    assert.are.equal(2, #files())
    assert.is_true(out:commit())
    assert.are.equal("new\n", h.slurp(dir .. "/a.folded"))
    assert.are.same({ "a.folded" }, files())
  end)

  it("leaves the old file and no temporary one on discard", function()
    h.write(dir .. "/a.folded", "old\n")
    local out = assert(args.output(dir .. "/a.folded"))
    out.fh:write("partial")
    out:discard()
    out:discard()
    assert.are.equal("old\n", h.slurp(dir .. "/a.folded"))
    assert.are.same({ "a.folded" }, files())
  end)

  it("fails at once for a directory that does not exist, naming the path", function()
    local out, err = args.output(dir .. "/no/a.folded")
    assert.is_nil(out)
    assert.truthy(err:find(dir .. "/no/a.folded", 1, true), err)
    assert.are.same({}, files())
  end)

  it("refuses a directory up front", function()
    local out, err = args.output(dir)
    assert.is_nil(out)
    assert.are.equal(dir .. ": Is a directory", err)
  end)

  it("keeps a complete profile when the rename fails, and names it", function()
    local out = assert(args.output(dir .. "/a.folded"))
    out.fh:write("complete\n")
    -- A directory in the way makes rename() fail after the file was written.
    assert(os.execute("mkdir " .. dir .. "/a.folded"))
    local ok, err = out:commit()
    assert.is_nil(ok)
    local kept = err:match("%(the profile is in (.*)%)$")
    assert.truthy(kept, err)
    assert.are.equal("complete\n", h.slurp(kept))
  end)

  it("writes /dev/null in place", function()
    local out = assert(args.output("/dev/null"))
    out.fh:write("x")
    assert.is_true(out:commit())
    assert.is_nil(out.tmp)
  end)
end)
