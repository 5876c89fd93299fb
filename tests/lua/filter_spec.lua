local filter = require "lupe.filter"

local function entry(pid, comm, frames)
  return { pid = pid, comm = comm, frames = frames or {}, exe = "/usr/sbin/nginx",
           cgroup = "system.slice/nginx.service" }
end

local nginx = entry(42, "nginx", {
  { name = "vfs_read", module = "[kernel]", kind = "kernel" },
  { name = "malloc", module = "libc.so.6", kind = "native" },
  { name = "main", module = "nginx", kind = "native" },
})
local app = entry(7, "app", { { name = "work", module = "app", kind = "native" } })

local function matches(src, e)
  local f = assert(filter.compile(src))
  return f.match(e)
end

describe("lupe.filter", function()
  it("compares pids and matches comm globs", function()
    assert.is_true(matches("pid == 42", nginx))
    assert.is_false(matches("pid == 42", app))
    assert.is_true(matches("pid != 42 and pid < 10", app))
    assert.is_true(matches("comm ~ 'ngin*'", nginx))
    assert.is_false(matches("comm ~ 'ngin'", nginx))
    assert.is_true(matches("comm ~ 'ng?nx'", nginx))
    assert.is_true(matches("comm !~ 'ngin*'", app))
    assert.is_true(matches('comm == "app"', app))
  end)

  it("matches frames, modules, exe, cgroup and kernel", function()
    assert.is_true(matches("frame ~ 'mall*'", nginx))
    assert.is_true(matches("frame == 'malloc'", nginx))
    assert.is_false(matches("frame ~ 'malloc'", app))
    assert.is_true(matches("module ~ 'libc*'", nginx))
    assert.is_true(matches("exe ~ '/usr/sbin/*'", nginx))
    assert.is_true(matches("cgroup ~ 'system.slice/*'", nginx))
    assert.is_true(matches("kernel", nginx))
    assert.is_false(matches("kernel", app))
  end)

  it("matches the APM service name, '' where the process has no agent", function()
    local shop = entry(9, "java", { { name = "work", module = "app", kind = "native" } })
    shop.service = "shop-api"
    assert.is_true(matches("service == 'shop-api'", shop))
    assert.is_true(matches("service ~ 'shop*'", shop))
    assert.is_false(matches("service ~ 'shop*'", app))
    assert.is_true(matches("service != 'shop-api'", app))
    assert.is_true(matches("service == ''", app))
    assert.is_true(matches("service !~ 'shop*' or pid == 9", shop))
    assert.is_false(matches("service !~ 'shop*'", shop))
    assert.is_nil(assert(filter.compile("service == 'x'")).pids())
  end)

  it("honours not, and, or and parentheses with the usual precedence", function()
    assert.is_true(matches("comm ~ 'ngin*' and not kernel or pid == 7", app))
    assert.is_false(matches("comm ~ 'ngin*' and not kernel or pid == 7", nginx))
    assert.is_true(matches("comm ~ 'ngin*' and not (kernel and pid == 1)", nginx))
    assert.is_true(matches("not not kernel", nginx))
  end)

  it("escapes glob text that is special in Lua patterns", function()
    local e = entry(1, "a.b%c(1)")
    assert.is_true(matches("comm ~ 'a.b%c(1)'", e))
    assert.is_false(matches("comm ~ 'a.b%c(2)'", e))
  end)

  it("matches globs as Lua's anchored patterns would, without their backtracking", function()
    -- Oracle: the glob as an anchored Lua pattern (fine for the few stars used here).
    local function oracle(g, v)
      local p = "^" .. g:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$"
      return v:match(p) ~= nil
    end
    local rnd, alphabet = math.random, { "a", "b", "*", "?", "." }
    math.randomseed(7)
    for _ = 1, 20000 do
      local g, v = {}, {}
      for i = 1, rnd(0, 6) do g[i] = alphabet[rnd(1, #alphabet)] end
      for i = 1, rnd(0, 8) do v[i] = alphabet[rnd(1, 2)] end
      g, v = table.concat(g), table.concat(v)
      assert(filter._glob(g)(v) == oracle(g, v), ("glob %q against %q"):format(g, v))
    end
    -- fuzz_filter's finding: twenty stars against a value that does not match. A Lua
    -- pattern takes minutes here; the matcher answers at once.
    local many = assert(filter.compile("comm ~ '" .. ("*"):rep(20) .. "x" .. ("*?"):rep(10) .. "y'"))
    assert.is_false(many.match(entry(1, "nginx: worker process, a long thread name")))
    assert.is_true(many.match(entry(1, "prefix x0123456789abc y")))
  end)

  it("derives the pid set BPF can enforce, only when every match needs one", function()
    assert.are.same({ 42 }, assert(filter.compile("pid == 42")).pids())
    assert.are.same({ 1, 2 }, assert(filter.compile("pid == 1 or pid == 2")).pids())
    assert.are.same({ 3 }, assert(filter.compile("comm ~ 'x*' and pid == 3")).pids())
    assert.is_nil(assert(filter.compile("pid == 1 or comm ~ 'x'")).pids())
    assert.is_nil(assert(filter.compile("not pid == 1")).pids())
  end)

  it("pushes comm globs and cgroup directories down to BPF as necessary conditions", function()
    local function bpf(src) return assert(filter.compile(src)).bpf() end
    assert.are.same({ comms = { "ngin*" } }, bpf("comm ~ 'ngin*'"))
    assert.are.same({ comms = { "nginx" } }, bpf("comm == 'nginx'"))
    assert.are.same({ comms = { "a", "b*" } }, bpf("comm == 'a' or comm ~ 'b*'"))
    assert.are.same({ comms = { "ngin*" }, cgroups = { "system.slice" } },
      bpf("comm ~ 'ngin*' and cgroup ~ 'system.slice/*' and frame ~ 'x'"))
    assert.are.same({ cgroups = { "user.slice" } }, bpf("cgroup ~ 'user.slice/user-*.slice/x'"))
    assert.are.same({ cgroups = { "a/b" } }, bpf("cgroup == 'a/b'"))
    assert.are.same({ pids = { 2 } }, bpf("(pid == 1 or pid == 2) and pid == 2"))
    -- What BPF cannot tell exactly stays out: inner globs, long comms, negations, the
    -- root cgroup, and an 'or' whose sides constrain different things.
    assert.are.same({}, bpf("comm ~ 'a?b'"))
    assert.are.same({}, bpf("comm ~ 'a*b'"))
    assert.are.same({}, bpf("comm == 'sixteen-chars-xx'"))
    assert.are.same({}, bpf("not comm ~ 'x'"))
    assert.are.same({}, bpf("cgroup ~ '*'"))
    assert.are.same({}, bpf("pid == 3 or comm ~ 'x'"))
    assert.are.same({}, bpf("comm != 'x'"))
  end)

  it("keeps every pushed-down condition necessary: what BPF drops never matches", function()
    -- An independent check over many entries: whenever the full filter matches, the
    -- pushed-down comm globs and pid lists match too.
    local comms = { "nginx", "ngin", "nginx2", "app", "a", "bash", "b" }
    local srcs = { "comm ~ 'ngin*' and pid > 3", "comm == 'nginx' or comm ~ 'a*'",
                   "(comm ~ 'b*' or comm == 'a') and not pid == 2", "pid == 2 or pid == 5" }
    for _, src in ipairs(srcs) do
      local f = assert(filter.compile(src))
      local b = f.bpf()
      for _, c in ipairs(comms) do
        for pid = 1, 6 do
          local e = entry(pid, c)
          if f.match(e) then
            if b.comms then
              local any = false
              for _, g in ipairs(b.comms) do
                local lit, star = g:match("^([^*]*)(%*?)$")
                if (star == "*" and c:sub(1, #lit) == lit) or c == lit then any = true end
              end
              assert.is_true(any, src .. " / " .. c)
            end
            if b.pids then
              local any = false
              for _, p in ipairs(b.pids) do any = any or p == pid end
              assert.is_true(any, src .. " / " .. pid)
            end
          end
        end
      end
    end
  end)

  it("reports syntax errors with the column and what was expected", function()
    local f, err = filter.compile("pid == ")
    local _
    assert.is_nil(f)
    assert.are.equal("filter:8: expected a number, found end of input", err)
    _, err = filter.compile("comm ~ 42")
    assert.are.equal("filter:8: expected a quoted string, found '42'", err)
    _, err = filter.compile("(pid == 1")
    assert.are.equal("filter:10: expected ')', found end of input", err)
    _, err = filter.compile("colour == 'red'")
    assert.matches("^filter:1: expected a field %(pid, comm", err)
    _, err = filter.compile("pid ~ 3")
    assert.matches("^filter:5: expected ==, !=, <, >, <= or >=", err)
    _, err = filter.compile("pid == 1 pid == 2")
    assert.are.equal("filter:10: expected 'and', 'or' or the end, found 'pid'", err)
    _, err = filter.compile("comm ~ 'x' & kernel")
    assert.are.equal("filter:12: unexpected character '&'", err)
    _, err = filter.compile("")
    assert.are.equal("filter:1: expected an expression, found end of input", err)
  end)

  it("compiles each source once", function()
    assert.are.equal(filter.compile("pid == 5"), filter.compile("pid == 5"))
  end)
end)
