local h = require "helpers"
local procmgr = require "lupe.procmgr"
local u64 = require "lupe.u64"

-- The file ID computed the documented way with coreutils, independently of lupe.
local function file_id_by_shell(path)
  local cmd = ("f=%q; n=$(stat -L -c %%s \"$f\"); { head -c 4096 \"$f\"; tail -c 4096 \"$f\"; " ..
    "perl -e 'print pack(\"Q>\", shift)' \"$n\"; } | sha256sum | cut -c1-32"):format(path)
  local p = assert(io.popen(cmd))
  local out = p:read("*l")
  p:close()
  return out
end

local function spawn(cmdline)
  local p = assert(io.popen(cmdline .. " >/dev/null 2>&1 & echo $!"))
  local pid = tonumber(p:read("*l"))
  p:close()
  return pid
end

-- Kills pid and waits until it is a zombie or gone (init here does not always reap).
local function kill(pid)
  os.execute("kill -9 " .. pid .. " 2>/dev/null")
  for _ = 1, 300 do
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return end
    local s = f:read("*a")
    f:close()
    if s:match("%) [ZX] ") then return end
    os.execute("sleep 0.01")
  end
end

local function wait_for(path)
  for _ = 1, 500 do
    local f = io.open(path)
    if f then f:close() return true end
    os.execute("sleep 0.01")
  end
  return false
end

local function find(ms, pred)
  for _, m in ipairs(ms) do if pred(m) then return m end end
end

local function is_root()
  local p = io.popen("id -u")
  local uid = p:read("*l")
  p:close()
  return uid == "0"
end

describe("lupe.procmgr", function()
  local pm, pids, tmp

  before_each(function()
    pm = assert(procmgr.new{})
    pids = {}
    tmp = os.tmpname()
    os.remove(tmp)
    os.execute("mkdir -p " .. tmp)
  end)

  after_each(function()
    for _, pid in ipairs(pids) do kill(pid) end
    pm:close()
    os.execute("rm -rf " .. tmp)
  end)

  local function start(cmdline)
    local pid = spawn(cmdline)
    pids[#pids + 1] = pid
    -- Wait for exec to finish: the command's binary shows in maps.
    os.execute("sleep 0.05")
    return pid
  end

  it("computes file IDs as sha256(head 4K, tail 4K, be64 size)[0:16]", function()
    for _, path in ipairs{ "/bin/sleep", "/etc/hostname", h.fixtures .. "/src/dlopener.c" } do
      local f = io.open(path)
      if f then
        f:close()
        assert.are.equal(file_id_by_shell(path), tostring(assert(procmgr.file_id_of_file(path))))
      end
    end
  end)

  it("synchronizes a live process: its executable, libc and the vDSO", function()
    local pid = start("exec /bin/sleep 30")
    assert.is_true(pm:synchronize(pid))
    local ms = assert(pm:mappings(pid))
    local exe = find(ms, function(m) return m.path == "/usr/bin/sleep" end)
    assert.truthy(exe, "no /usr/bin/sleep mapping")
    assert.are.equal(file_id_by_shell("/usr/bin/sleep"), tostring(exe.file_id))
    assert.truthy(find(ms, function(m) return m.path:match("/libc%.so%.6$") end))
    assert.truthy(find(ms, function(m) return m.path == "[vdso]" end))
    -- The mapping is found by any address inside it, and not past its end.
    local mid = exe.vaddr + exe.length / 2
    assert.are.equal("/usr/bin/sleep", pm:find_mapping(pid, mid).path)
    -- Bias: the file offset maps to vaddr - bias in the ELF (readelf as the oracle).
    local p = io.popen("readelf -lW /usr/bin/sleep | awk '$1==\"LOAD\" && / R E / {print $2, $3}'")
    local off, va = p:read("*l"):match("(0x%x+) (0x%x+)")
    p:close()
    assert.are.equal(u64.parse(va) - u64.parse(off) + exe.file_offset, exe.vaddr - exe.bias)
    -- Every mapping has a matching add_mapping call in BPF, one new_pid first.
    local calls = pm:ebpf_calls()
    assert.are.equal("new_pid", calls[1].call)
    assert.are.equal(#ms + 1, #calls)
    local st = pm:stats()
    assert.are.equal(1, st.processes)
    assert.are.equal(#ms, st.mappings)
  end)

  it("re-synchronizes by difference: a dlopen'd library is the only change", function()
    local bin = tmp .. "/dlopener"
    assert.are.equal(0, (h.run(("cc -O1 -o %s %s/src/dlopener.c -ldl"):format(bin, h.fixtures))))
    local lib = "/lib/x86_64-linux-gnu/libz.so.1"
    local trigger = tmp .. "/go"
    local pid = start(("exec %s %s %s"):format(bin, lib, trigger))
    assert.is_true(pm:synchronize(pid))
    local before = #assert(pm:mappings(pid))
    pm:ebpf_calls(true)
    assert.is_true(pm:synchronize(pid))
    assert.are.same({}, pm:ebpf_calls(), "a re-sync without changes touched BPF")
    h.write(trigger, "")
    assert.is_true(wait_for(trigger .. ".done"))
    assert.is_true(pm:synchronize(pid))
    local calls = pm:ebpf_calls(true)
    local ms = pm:mappings(pid)
    assert.are.equal(before + 1, #ms)
    assert.are.equal(1, #calls)
    assert.are.equal("add_mapping", calls[1].call)
    local z = pm:find_mapping(pid, calls[1].vaddr)
    assert.matches("libz%.so", z.path)
  end)

  it("keeps an exited process until symbolization_complete passes its exit time", function()
    local pid = start("exec /bin/sleep 30")
    assert.is_true(pm:synchronize(pid))
    local n = #pm:mappings(pid)
    local exe = find(pm:mappings(pid), function(m) return m.path == "/usr/bin/sleep" end)
    kill(pid)
    local t = procmgr.ktime_now()
    assert.is_true(pm:pid_exit(pid, t))
    assert.is_false(pm:pid_exit(pid, t), "a second exit of the same pid")
    -- Still convertible: mappings and executables stay.
    assert.are.equal(n, #pm:mappings(pid))
    assert.are.equal(1, pm:exe_refcount(exe.file_id))
    assert.are.equal("/usr/bin/sleep", pm:find_mapping(pid, exe.vaddr, t - 1000).path)
    assert.are.equal(0, pm:symbolization_complete(t - 1))
    assert.are.equal(1, pm:stats().exited_pending)
    assert.are.equal(1, pm:symbolization_complete(t))
    assert.is_nil(pm:mappings(pid))
    assert.are.equal(0, pm:exe_refcount(exe.file_id))
    local st = pm:stats()
    assert.are.equal(0, st.processes + st.exited_pending + st.executables + st.mappings)
  end)

  it("sweeps PIDs that died without an exit event", function()
    local pid = start("exec /bin/sleep 30")
    assert.is_true(pm:synchronize(pid))
    kill(pid)
    assert.are.equal(1, pm:cleanup_pids())
    assert.are.equal(1, pm:stats().exited_pending)
    assert.are.equal(0, pm:cleanup_pids())
  end)

  it("treats a vanished PID as an exit and says so", function()
    local pid = start("exec /bin/sleep 30")
    assert.is_true(pm:synchronize(pid))
    kill(pid)
    local ok, msg, errno = pm:synchronize(pid)
    assert.is_nil(ok)
    assert.matches("synchronize pid %d+: No such process", msg)
    assert.are.equal(3, errno) -- ESRCH
    assert.are.equal(1, pm:stats().exited_pending)
  end)

  it("loads a file shared by two processes once, unloads it after both are released", function()
    local bin = tmp .. "/mysleep"
    os.execute("cp /bin/sleep " .. bin)
    local id = assert(procmgr.file_id_of_file(bin))
    local a, b = start("exec " .. bin .. " 30"), start("exec " .. bin .. " 31")
    local loaded0 = pm:stats().executables_loaded_total
    assert.is_true(pm:synchronize(a))
    local loaded1 = pm:stats().executables_loaded_total
    assert.is_true(pm:synchronize(b))
    local st = pm:stats()
    -- b brought nothing new: the same binary, libc, ld.so and vDSO.
    assert.are.equal(loaded1, st.executables_loaded_total)
    assert.is_true(loaded1 > loaded0)
    assert.are.equal(2, pm:exe_refcount(id))
    assert.are.equal(tostring(id), tostring(pm.file_ids:get(id:host())))
    kill(a)
    kill(b)
    local t = procmgr.ktime_now()
    pm:pid_exit(a, t)
    assert.are.equal(2, pm:exe_refcount(id), "released before symbolization_complete")
    pm:pid_exit(b, t)
    pm:symbolization_complete(t)
    assert.are.equal(0, pm:exe_refcount(id))
    assert.are.equal(st.executables_loaded_total, pm:stats().executables_unloaded_total)
  end)

  it("follows a deleted executable through map_files", function()
    local bin = tmp .. "/doomed"
    os.execute("cp /bin/sleep " .. bin)
    local id = assert(procmgr.file_id_of_file(bin))
    local pid = start("exec " .. bin .. " 30")
    os.remove(bin)
    assert.is_true(pm:synchronize(pid))
    local m = find(pm:mappings(pid), function(x) return x.path == bin end)
    assert.truthy(m, "no mapping for the deleted file")
    assert.is_true(m.deleted)
    assert.are.equal(tostring(id), tostring(m.file_id))
  end)

  it("reads a process in its own mount namespace", function()
    if not is_root() then pending("needs root for unshare -m") return end
    local script = tmp .. "/ns.sh"
    h.write(script, ([[
      mkdir -p %s/mnt && mount -t tmpfs none %s/mnt && cp /bin/sleep %s/mnt/nssleep &&
      exec %s/mnt/nssleep 30
    ]]):format(tmp, tmp, tmp, tmp))
    local pid = start("exec unshare -m --propagation private sh " .. script)
    os.execute("sleep 0.2")
    -- The file exists only inside the namespace.
    assert.is_nil(io.open(tmp .. "/mnt/nssleep"))
    assert.is_true(pm:synchronize(pid))
    local m = find(pm:mappings(pid), function(x) return x.path:match("nssleep$") end)
    assert.truthy(m, "no mapping for the namespaced binary")
    assert.are.equal(file_id_by_shell("/bin/sleep"), tostring(m.file_id))
  end)

  it("lets synthetic stack deltas take precedence, now and later", function()
    local bin = tmp .. "/synth"
    os.execute("cp /bin/sleep " .. bin)
    local id = assert(procmgr.file_id_of_file(bin))
    local deltas = { { address = 0x1000, cfa_opcode = 1, cfa_param = 16 },
                     { address = 0x2000, cfa_opcode = 1, cfa_param = 8 } }
    assert.is_true(pm:add_synth_interval_data(id, deltas))
    local pid = start("exec " .. bin .. " 30")
    pm:synchronize(pid)
    local load = find(pm:ebpf_calls(true), function(c) return c.call == "load_deltas" end)
    assert.truthy(load)
    assert.are.equal(id:host(), load.host)
    assert.are.equal(2, load.ndeltas)
    -- Replacing them reloads the loaded file.
    assert.is_true(pm:add_synth_interval_data(id, { deltas[1] }))
    local calls = pm:ebpf_calls(true)
    assert.are.same({ "unload_deltas", "load_deltas" }, { calls[1].call, calls[2].call })
    assert.are.equal(1, calls[2].ndeltas)
    assert.has_error(function()
      pm:add_synth_interval_data(id, { deltas[2], deltas[1] })
    end)
  end)

  it("keeps 64-bit values exact", function()
    local hi = u64.parse("0xffffffff81d33df7")
    assert.are.equal("0xffffffff81d33df7", u64.hex(u64.from_c(u64.to_c(hi))))
    local id = procmgr.file_id("0123456789abcdeffedcba9876543210")
    assert.is_true(pm.file_ids:set(u64.parse("0xfedcba9876543210"), id))
    assert.are.equal(tostring(id), tostring(pm.file_ids:get(u64.parse("0xfedcba9876543210"))))
    assert.is_nil(pm.file_ids:get(1))
    assert.has_error(function() procmgr.file_id("xyz") end)
  end)

  it("counts permission failures without forgetting the process", function()
    if not is_root() then pending("runs as root only") return end
    -- pid 1's maps are readable by root; an unreadable one is simulated by a fixture root.
    local root = tmp .. "/proc"
    os.execute(("mkdir -p %s/77 && touch %s/77/maps && chmod 000 %s/77/maps"):format(root, root, root))
    local p2 = procmgr.new{ proc_root = root }
    -- root bypasses file modes, so this reads an empty file: no mappings.
    assert.is_true(p2:synchronize(77))
    assert.are.equal(1, p2:stats().sync_empty)
    p2:close()
  end)
end)
