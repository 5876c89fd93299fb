-- print the stack deltas of an ELF file
local native = require("lupe.native").ehframe
local u64 = require "lupe.u64"

local USAGE = [=[
usage: lupe deltas [OPTIONS] FILE

Prints the stack deltas lupe extracts from FILE's call-frame information (.eh_frame,
.debug_frame): one line per address where the unwind rule changes, in address order,
each rule holding until the next line:
  0x000000000001a2b0 cfa=rsp+16 rbp=cfa-16    CFA = rsp + 16, the caller's rbp at CFA - 16
  0x000000000001a2c0 cfa=rbp+16 rbp=same      CFA = rbp + 16, rbp not saved by this frame
  0x000000000001a2d0 invalid                  no rule (between functions, unsupported CFI)
Other commands: stop (outermost frame), plt (a PLT stub), signal (a signal trampoline).
The return address is always at CFA - 8. A summary goes to stderr.

options:
      --linear           walk .eh_frame entry by entry, ignoring .eh_frame_hdr's table
      --no-eh-frame      read .debug_frame only
      --no-debug-frame   read .eh_frame only
  -h, --help             this text
]=]

local function die(msg, code)
  io.stderr:write("lupe deltas: ", msg, "\n")
  os.exit(code or 2)
end

local argv = { ... }
local opts, path = {}, nil
for i = 1, #argv do
  local a = argv[i]
  if a == "-h" or a == "--help" then
    io.stdout:write(USAGE)
    os.exit(0)
  elseif a == "--linear" then
    opts.no_eh_frame_hdr = true
  elseif a == "--no-eh-frame" then
    opts.no_eh_frame = true
  elseif a == "--no-debug-frame" then
    opts.no_debug_frame = true
  elseif a:sub(1, 1) == "-" and a ~= "-" then
    die("unknown option '" .. a .. "' (see lupe deltas --help)")
  elseif path then
    die("one FILE only (see lupe deltas --help)")
  else
    path = a
  end
end
if not path then die("no FILE given (see lupe deltas --help)") end

local deltas, stats = native.extract(path, opts)
if not deltas then die(stats, 1) end

-- Lines go out in chunks: a large library has a million deltas.
local out, n = {}, 0
local hex, concat, write = u64.hex, table.concat, io.stdout.write
for i = 1, #deltas do
  local d = deltas[i]
  n = n + 1
  if d.cmd then
    out[n] = hex(d.address) .. " " .. d.cmd
  else
    out[n] = hex(d.address) .. " cfa=" .. d.cfa .. " rbp=" .. d.fp
  end
  if n == 4096 then
    out[n + 1] = ""
    write(io.stdout, concat(out, "\n"))
    out, n = {}, 0
  end
end
if n > 0 then
  out[n + 1] = ""
  write(io.stdout, concat(out, "\n"))
end

io.stdout:flush()
io.stderr:write(("lupe deltas: %s: %d deltas (%d before merging, %d bytes), %d FDEs, %d CIEs, "
  .. "%d bad FDEs, %d bad CIEs, %d unsupported expressions, %d unsupported rules, "
  .. "%d skipped FDEs (%d empty, %d outside code, %d overlapping), sources %s\n"):format(
  path, stats.deltas, stats.deltas_raw, stats.bytes, stats.fdes, stats.cies, stats.bad_fdes,
  stats.bad_cies, stats.unsupported_exprs, stats.unsupported_rules,
  stats.empty_fdes + stats.outside_fdes + stats.overlapping_fdes, stats.empty_fdes,
  stats.outside_fdes, stats.overlapping_fdes, stats.sources))
