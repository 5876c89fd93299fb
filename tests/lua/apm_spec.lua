local h = require "helpers"
local u64 = require "lupe.u64"
local ffi = require "ffi"
local apm = require("lupe.native").apm

local function shell(cmd)
  local status, out = h.run(cmd)
  return status, out
end

-- A little-endian u32 / u16 written byte by byte (the fixture's host order on x86-64 and
-- arm64; specs that build storage bytes skip on big-endian hosts).
local function le32(n)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 16777216) % 256)
end
local function le16(n) return string.char(n % 256, math.floor(n / 256) % 256) end
local function str(s) return le32(#s) .. s end

local function bytes(...)
  return string.char(...)
end

local function wait_for_line(path, prefix)
  for _ = 1, 500 do
    local f = io.open(path)
    if f then
      for line in f:lines() do
        if line:sub(1, #prefix) == prefix then f:close() return line end
      end
      f:close()
    end
    os.execute("sleep 0.01")
  end
end

describe("lupe.native.apm", function()
  it("encodes the correlation message byte for byte", function()
    local trace = bytes(0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xff)
    local tx = bytes(1, 0, 0, 0, 0, 0, 0, 0x80)
    local hash = { u64.to_c(u64.parse("0xa1a2a3a4a5a6a7a8")), u64.to_c(u64.parse("0x0000000000000102")) }
    local msg = apm.encode(trace, tx, hash, 0xbeef)
    -- Hand-written: LE type 1, LE minor 1, IDs as given, the hash big-endian, LE count.
    local want = bytes(1, 0, 1, 0) .. trace .. tx ..
      bytes(0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0, 0, 0, 0, 0, 0, 1, 2) ..
      bytes(0xef, 0xbe)
    assert.are.equal(46, apm.MSG_LEN)
    assert.are.equal(46, #msg)
    assert.are.equal(want, msg)
    -- Small exact numbers work as 64-bit values too.
    assert.are.equal(apm.encode(trace, tx, { 0, 258 }, 0xbeef):sub(29, 44),
      bytes(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2))
  end)

  it("raises on malformed arguments", function()
    assert.has_error(function() apm.encode("short", ("\0"):rep(8), { 0, 0 }, 1) end)
    assert.has_error(function() apm.encode(("\0"):rep(16), ("\0"):rep(9), { 0, 0 }, 1) end)
    assert.has_error(function() apm.encode(("\0"):rep(16), ("\0"):rep(8), { 0, 0 }, 65536) end)
    assert.has_error(function() apm.encode(("\0"):rep(16), ("\0"):rep(8), "hash", 1) end)
  end)

  it("recognises agent library paths", function()
    assert.is_true(apm.path_matches("/opt/agent/elastic-jvmti-linux-x86_64.so"))
    assert.is_true(apm.path_matches("/x/elastic-jvmti-linux-arm64.so"))
    assert.is_false(apm.path_matches("/x/elastic-jvmti-linux-arm64.so.1"))
    assert.is_false(apm.path_matches("/x/libelastic-jvmti-linux-x86_64.so"))
    assert.is_false(apm.path_matches("elastic-jvmti-linux-x86_64.so"))
  end)

  it("parses process storage and refuses oversized strings", function()
    if not ffi.abi("le") then pending("little-endian host only") return end
    local s = assert(apm.parse_storage(le16(1) .. str("svc-a") .. str("staging") .. str("/run/a.sock")))
    assert.are.same({ minor = 1, service = "svc-a", env = "staging", socket = "/run/a.sock" }, s)
    local ok, msg, errno = apm.parse_storage(le16(1) .. str(("x"):rep(129)) .. str("") .. str(""))
    assert.is_nil(ok)
    assert.matches("parse_storage", msg)
    assert.are.equal(22, errno) -- EINVAL
    ok, msg, errno = apm.parse_storage(le16(1) .. str("svc"))
    assert.is_nil(ok)
    assert.matches("parse_storage", msg)
    assert.are.equal(61, errno) -- ENODATA: cut short
  end)

  describe("with the fixture agent", function()
    local dir, lib, app
    local pids = {}

    setup(function()
      dir = h.tmpname("-apm")
      os.execute("mkdir -p " .. dir)
      lib = dir .. "/elastic-jvmti-linux-x86_64.so"
      app = dir .. "/app"
      local fx = h.fixtures .. "/apm"
      assert.are.equal(0, (shell(("cc -O1 -fPIC -mtls-dialect=gnu2 -shared " ..
        "-Wl,-soname,elastic-jvmti-linux-x86_64.so -o %s %s/agent.c"):format(lib, fx))))
      assert.are.equal(0, (shell(("cc -O1 -pthread -o %s %s/app.c %s -Wl,-rpath,'$ORIGIN'")
        :format(app, fx, lib))))
    end)

    teardown(function()
      for _, pid in ipairs(pids) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
      os.execute("rm -rf " .. dir)
    end)

    local function start(tag, args)
      local log = dir .. "/" .. tag .. ".log"
      local p = assert(io.popen(("%s --log %s %s >/dev/null 2>&1 & echo $!"):format(app, log, args)))
      local pid = tonumber(p:read("*l"))
      p:close()
      pids[#pids + 1] = pid
      local ready = assert(wait_for_line(log, "ready "), "the fixture did not get ready")
      return pid, log, tonumber(ready:match("tls_offset=(%-?%d+)"))
    end

    it("detects the library where readelf finds the symbol and the TLS descriptor", function()
      if jit.arch ~= "x64" then pending("x86-64 relocations only") return end
      local _, sym = shell(("readelf -W --dyn-syms %s | awk '$8 == " ..
        "\"elastic_apm_profiling_correlation_process_storage_v1\" { print $2; exit }'"):format(lib))
      local _, rel = shell(("readelf -rW %s | awk '$3 == \"R_X86_64_TLSDESC\" { print $1; exit }'")
        :format(lib))
      local l = assert(apm.detect(lib))
      assert.are.equal(62, l.machine) -- EM_X86_64
      assert.are.equal(u64.parse("0x" .. sym:match("%x+")), u64.from_c(l.storage_vaddr))
      assert.are.equal(u64.parse("0x" .. rel:match("%x+")), u64.from_c(l.tlsdesc_vaddr))
      local copy = dir .. "/libnot-an-agent.so"
      os.execute(("cp %s %s"):format(lib, copy))
      local ok, _, errno = apm.detect(copy)
      assert.is_nil(ok)
      assert.are.equal(2, errno) -- ENOENT: not named like an agent library
    end)

    it("attaches, sends a message the agent decodes, and counts", function()
      local sock = dir .. "/agent.sock"
      local pid, log, tls_offset = start("send", "--bind --socket " .. sock)
      local r = assert(apm.new())
      assert.is_true(r:scan(pid))
      local a = r:agent(pid)
      assert.is_true(a.attached)
      assert.are.equal(tls_offset, a.tls_offset)
      assert.are.same({ minor = 1, service = "lupe-test-svc", env = "test", socket = sock }, a.storage)
      assert.is_true(a.socket_open)

      local trace = bytes(0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
                          0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00)
      local tx = bytes(0xca, 0xfe, 0, 0, 0, 0, 0, 1)
      local hash = { u64.to_c(u64.parse("0x1111111122222222")), u64.to_c(u64.parse("0x3333333344444444")) }
      assert.are.equal("lupe-test-svc", r:notify(pid, trace, tx, hash, 12))
      local line = assert(wait_for_line(log, "msg "))
      assert.are.equal("msg len=46 type=1 minor=1 trace=112233445566778899aabbccddeeff00 " ..
        "tx=cafe000000000001 stack=11111111222222223333333344444444 count=12", line)
      -- A zero transaction sends nothing but still names the service.
      assert.are.equal("lupe-test-svc", r:notify(pid, trace, ("\0"):rep(8), hash, 1))
      local st = r:stats()
      assert.are.equal(1, st.sent)
      assert.are.equal(1, st.no_transaction)
      assert.are.equal(1, st.agents_found)
      assert.are.equal(0, st.rejected_paths)
      r:pid_exit(pid)
      assert.is_nil(r:agent(pid))
      assert.is_nil(r:notify(pid, trace, tx, hash, 1))
      r:close()
      r:close() -- idempotent
      assert.matches("closed", tostring(r))
    end)

    it("pm:notify_apm reaches the agent a manager found while synchronizing", function()
      local sock = dir .. "/pm.sock"
      local pid, log = start("pm", "--bind --socket " .. sock)
      local pm = assert(require("lupe.procmgr").new{ apm = true })
      assert.is_true(pm:synchronize(pid))
      local st = pm:apm_stats()
      assert.are.equal(1, st.libs_detected)
      assert.are.equal(1, st.agents)
      -- The recorder under the APM decorator still logs BPF's calls.
      assert.is_true(#pm:ebpf_calls() > 0)
      local raw = { pid = pid, trace_id = ("\x42"):rep(16), tx_id = bytes(0, 0, 0, 0, 0, 0, 0, 9) }
      local hash = ("0f"):rep(16)
      assert.are.equal("lupe-test-svc", pm:notify_apm(raw, hash, 3))
      local line = assert(wait_for_line(log, "msg "))
      assert.are.equal("msg len=46 type=1 minor=1 trace=" .. ("42"):rep(16) ..
        " tx=0000000000000009 stack=" .. hash .. " count=3", line)
      -- No agent in this process, and a manager without a registry: nil, nothing sent.
      assert.is_nil(pm:notify_apm({ pid = 1, trace_id = raw.trace_id, tx_id = raw.tx_id }, hash, 1))
      local plain = assert(require("lupe.procmgr").new{})
      assert.is_nil(plain:notify_apm(raw, hash, 1))
      assert.is_nil(plain:apm_stats())
      plain:close()
      assert.are.equal(1, pm:apm_stats().sent)
      assert.are.equal(3, pm:apm_stats().sent_samples)
      local short = { pid = pid, trace_id = "short", tx_id = raw.tx_id }
      assert.has_error(function() pm:notify_apm(short, hash, 1) end)
      assert.has_error(function() pm:notify_apm(raw, "nothex", 1) end)
      pm:close()
    end)

    it("refuses a socket path with '..' and counts it", function()
      os.execute("mkdir -p " .. dir .. "/sub")
      local sock = dir .. "/sub/../agent2.sock"
      local pid = start("dotdot", "--socket " .. sock)
      local r = assert(apm.new())
      assert.is_true(r:scan(pid))
      local a = r:agent(pid)
      assert.is_true(a.attached)
      assert.is_false(a.socket_open)
      assert.are.equal(22, a.socket_errno) -- EINVAL
      local st = r:stats()
      assert.are.equal(1, st.rejected_paths)
      assert.are.equal("lupe-test-svc", r:notify(pid, ("\1"):rep(16), ("\1"):rep(8), { 1, 2 }, 1))
      assert.are.equal(0, r:stats().sent)
      assert.are.equal(1, r:stats().no_socket)
      r:close()
    end)
  end)
end)
