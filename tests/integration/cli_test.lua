-- Least privilege: as root, lupe refuses Lua code that another user could have written
-- (the script, a scripts/ command, anything under LUPE_PATH) with exit status 2 and the
-- reason. Needs root (the check applies to root only); SKIPs without it.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check

local function write(path, text, mode)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  os.execute(("chmod %s %s"):format(mode or "644", path))
end

local function root_tmp()
  if not t.is_root() then t.skip("the check applies to root only") end
  local tmp = t.tmpdir()
  os.execute("chmod 755 " .. tmp)
  return tmp
end

local function refused(cmd, what)
  local status, out, err = t.run(cmd)
  check(status == 2, "exit status %d, not 2 (stdout %q, stderr %q)", status, out, err)
  check(out == "", "the script ran: %q", out)
  check(err:match("refusing to run as root") and err:find(what, 1, true),
    "stderr does not say why (%s): %q", what, err)
end

t.case("a script writable by other users is refused", function()
  local tmp = root_tmp()
  write(tmp .. "/s.lua", "print('ran')\n", "646")
  refused(t.bin .. " run " .. tmp .. "/s.lua", "writable by other users")
  os.execute("rm -rf " .. tmp)
end)

t.case("a group-writable script and one owned by another user are refused", function()
  local tmp = root_tmp()
  write(tmp .. "/g.lua", "print('ran')\n", "664")
  refused(t.bin .. " run " .. tmp .. "/g.lua", "writable by its group")
  write(tmp .. "/n.lua", "print('ran')\n", "644")
  os.execute("chown 65534 " .. tmp .. "/n.lua")
  refused(t.bin .. " run " .. tmp .. "/n.lua", "owned by uid 65534")
  os.execute("rm -rf " .. tmp)
end)

t.case("a script in a directory others can write (not sticky) is refused", function()
  local tmp = root_tmp()
  os.execute("mkdir -m 777 " .. tmp .. "/open")
  write(tmp .. "/open/s.lua", "print('ran')\n", "644")
  refused(t.bin .. " run " .. tmp .. "/open/s.lua", tmp .. "/open' is writable")
  -- A sticky directory such as /tmp is fine: nobody else can replace root's file there.
  os.execute("chmod 1777 " .. tmp .. "/open")
  local status, out = t.run(t.bin .. " run " .. tmp .. "/open/s.lua")
  check(status == 0 and out == "ran\n", "status %d, %q", status, out)
  os.execute("rm -rf " .. tmp)
end)

t.case("a root-owned script that only root can write runs, also through a symlink", function()
  local tmp = root_tmp()
  write(tmp .. "/ok.lua", "print('ran')\n", "644")
  os.execute(("ln -s %s/ok.lua %s/link.lua"):format(tmp, tmp))
  for _, p in ipairs({ "ok.lua", "link.lua" }) do
    local status, out, err = t.run(t.bin .. " run " .. tmp .. "/" .. p)
    check(status == 0 and out == "ran\n", "%s: status %d, %q, %q", p, status, out, err)
  end
  os.execute("rm -rf " .. tmp)
end)

t.case("a writable file under LUPE_PATH, or a writable scripts/ command, is refused", function()
  local tmp = root_tmp()
  os.execute(("mkdir -p %s/share/lua/lupe %s/share/scripts"):format(tmp, tmp))
  write(tmp .. "/ok.lua", "print('ran')\n", "644")
  write(tmp .. "/share/lua/lupe/evil.lua", "return {}\n", "666")
  refused(("LUPE_PATH=%s/share %s run %s/ok.lua"):format(tmp, t.bin, tmp),
    "share/lua/lupe/evil.lua' is writable by other users")
  os.execute("chmod 644 " .. tmp .. "/share/lua/lupe/evil.lua")
  write(tmp .. "/share/scripts/cmd.lua", "print('ran')\n", "664")
  refused(("LUPE_PATH=%s/share %s cmd"):format(tmp, t.bin),
    "cmd.lua' is writable by its group")
  os.execute("chmod 644 " .. tmp .. "/share/scripts/cmd.lua")
  local status, out, err = t.run(("LUPE_PATH=%s/share %s cmd"):format(tmp, t.bin))
  check(status == 0 and out == "ran\n", "status %d, %q, %q", status, out, err)
  os.execute("rm -rf " .. tmp)
end)

t.case("--watch refuses a reload that another user could have written", function()
  local tmp = root_tmp()
  -- No session: the run loop is the script's own; the check is the loader's, tested by
  -- loading twice through lupe.watch directly.
  write(tmp .. "/w.lua", "print('ran')\n", "644")
  local status, out, err = t.run(t.bin .. " run --watch " .. tmp .. "/w.lua")
  check(status == 0 and out == "ran\n", "status %d, %q, %q", status, out, err)
  local w = require("lupe.watch").new(tmp .. "/w.lua", {})
  w.root = true
  os.execute("chmod 666 " .. tmp .. "/w.lua")
  local kind, msg = w:start_script()
  check(kind == "error" and msg:match("refusing to run as root"), "%s %s", kind, tostring(msg))
  os.execute("rm -rf " .. tmp)
end)

os.exit(t.run_all())
