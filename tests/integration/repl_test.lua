-- `lupe repl` driven through a pseudo-terminal (python3's pty module): helpers on a live
-- session, a Lua error, Tab completion, Ctrl-C (a loop, a line) and Ctrl-D. Needs root; SKIPs without it.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check

-- Types each input once the previous prompt is back; writes the transcript. argv: out
-- file, then the command. Inputs come on stdin, one a line, as Python string literals.
local DRIVER = [[
import ast, os, pty, select, sys, time
out_path, argv = sys.argv[1], sys.argv[2:]
inputs = [ast.literal_eval(l) for l in sys.stdin.read().splitlines() if l.strip()]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
buf = b""
def wait_for(pat, limit=20.0):
    global buf
    end = time.time() + limit
    while time.time() < end:
        if pat is not None and buf.count(pat) >= wait_for.seen + 1:
            wait_for.seen = buf.count(pat)
            return True
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                d = os.read(fd, 65536)
            except OSError:
                return False
            if not d:
                return False
            buf += d
    return pat is None
wait_for.seen = 0
ok = wait_for(b"lupe> ")
for kind, text in inputs:
    os.write(fd, text.encode())
    if kind == "prompt":
        ok = wait_for(b"lupe> ") and ok
    else:
        wait_for(None, float(kind))
        wait_for.seen = buf.count(b"lupe> ")  # redraws after Tab show the prompt again
# lupe must exit after Ctrl-D; a hang is reported (status 124), never waited for.
end_t, st = time.time() + 60, None
while st is None and time.time() < end_t:
    p, s = os.waitpid(pid, os.WNOHANG)
    if p:
        st = s
        break
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        try:
            buf += os.read(fd, 65536)
        except OSError:
            pass
if st is None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    st = 124 << 8
try:
    while True:
        r, _, _ = select.select([fd], [], [], 0.1)
        if not r: break
        d = os.read(fd, 65536)
        if not d: break
        buf += d
except OSError:
    pass
open(out_path, "wb").write(buf)
print(os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st), "ok" if ok else "timeout")
]]

local function slurp(path) return t.slurp(path) or "" end

t.case("helpers, an error, completion, Ctrl-C and Ctrl-D on a live session", function()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  if t.sh("python3 -c 'import pty'") ~= 0 then t.skip("python3 with pty is missing") end
  local tmp = t.tmpdir()
  local bp = io.popen("sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!")
  local busy = tonumber(bp:read("*l"))
  bp:close()
  local f = assert(io.open(tmp .. "/driver.py", "w"))
  f:write(DRIVER)
  f:close()
  local inputs = {
    '("1.0", "")',                -- let the session sample for a second
    '("prompt", "stats()\\r")',
    '("prompt", "ps()\\r")',
    '("prompt", "maps(' .. busy .. ')\\r")',
    '("prompt", "top(5)\\r")',
    '("prompt", "freq(49)\\r")',
    '("prompt", "freq()\\r")',
    '("prompt", "flame(\\"' .. tmp .. '/out.svg\\")\\r")',
    '("prompt", "nosuch.x\\r")',
    '("1.0", "while true do end\\r")',
    '("prompt", "\\x03")',        -- Ctrl-C stops a running loop
    '("1.0", "s:run{duration = 30} print(\\"run1 ended\\")\\r")',
    '("prompt", "\\x03")',        -- Ctrl-C ends the run (the line goes on)
    '("prompt", "t0 = os.time() s:run{duration = 2} print(\\"run2 took\\", os.time() - t0)\\r")',
    '("1.0", "lupe.se\\t")',      -- completes to lupe.session(
    '("prompt", "\\x03")',        -- Ctrl-C clears it
    '("prompt", "lupe.vers\\t\\r")',
    '("2.0", "\\x04")',           -- Ctrl-D
  }
  f = assert(io.open(tmp .. "/inputs", "w"))
  f:write(table.concat(inputs, "\n"), "\n")
  f:close()
  local rc, res = t.sh(("cd %s && HOME=%s python3 %s/driver.py %s/out %s repl -F 99 -p %d < %s/inputs")
    :format(tmp, tmp, tmp, tmp, t.bin, busy, tmp))
  os.execute("kill " .. busy)
  local out = slurp(tmp .. "/out"):gsub("\r", "")
  local ok, err = pcall(function()
    check(rc == 0, "driver failed: %s", res)
    check(res:match("^0 ok"), "exit status or prompt timeout: %s\n%s", res, out)
    check(out:match("sampling pids " .. busy .. " at 99 Hz"), "no banner:\n%s", out)
    local samples = tonumber(out:match("\n  samples = (%d+),"))
    check(samples and samples > 0, "stats() shows no samples:\n%s", out)
    check(out:match("PID%s+SAMPLES%s+COMM") and out:match("\n%s+" .. busy .. "%s+%d+%s+sh"),
      "ps() does not list the sampled shell:\n%s", out)
    check(out:match("%d+ executable mappings") and (out:match("/dash") or out:match("/sh\n")),
      "maps() shows no shell binary:\n%s", out)
    check(out:match("self%%%s+total%%"), "top(5) printed no table:\n%s", out)
    check(out:match("freq%(49%)\n49\n") and out:match("freq%(%)\n49\n"), "freq:\n%s", out)
    check(slurp(tmp .. "/out.svg"):match("^<%?xml") or slurp(tmp .. "/out.svg"):match("<svg"),
      "flame() wrote no SVG")
    check(out:match("error: stdin:1: attempt to index global 'nosuch'"), "no error:\n%s", out)
    check(out:match("while true do end\n%^Cerror: interrupted"), "Ctrl-C did not stop the loop:\n%s", out)
    check(out:match("%^Crun1 ended\n"), "Ctrl-C did not end s:run:\n%s", out)
    -- The interrupt is the last line's: the next run lasts its 2 s.
    local took = tonumber(out:match("run2 took\t(%d+)"))
    check(took and took >= 1, "the run after an interrupted one ended at once:\n%s", out)
    check(out:match("lupe%.se[^\n]*ssion%("), "Tab did not complete lupe.se:\n%s", out)
    check(out:match("%^C\n"), "Ctrl-C not shown:\n%s", out)
    check(out:match("ion\n\"%d+%.%d+%.%d+\"\n"), "lupe.vers<Tab> did not evaluate:\n%s", out)
    -- History survives the session, one entry a line.
    local hist = slurp(tmp .. "/.lupe_history")
    check(hist:match("stats%(%)") and hist:match("freq%(49%)"), "history: %q", hist)
  end)
  os.execute("rm -rf " .. tmp)
  if not ok then error(err, 0) end
end)

os.exit(t.run_all())
