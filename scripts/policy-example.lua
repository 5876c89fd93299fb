-- sample the hottest processes faster than the rest (a policy example)
--
-- Samples the whole system; every few seconds the processes with the most samples in
-- that interval get a high rate and every other process a low one. The rates are
-- enforced in BPF (lupe.policy): the sampler runs at the high rate and keeps one sample
-- in N of the others, so the hot processes get detailed profiles while the rest of the
-- machine costs little. At the end it prints the hot set's history and a top summary.
--
--   lupe policy-example -d 30                     3 hot processes at 499 Hz, others 19 Hz
--   lupe policy-example -d 60 --hot 5 --fast 999 --slow 49 --every 5
local lupe = require "lupe"
local policy = require "lupe.policy"
local args = require "lupe.args"

local USAGE = [=[
usage: lupe policy-example [-d SECONDS] [--hot N] [--fast HZ] [--slow HZ] [--every SECONDS]
]=]

local o = args.cli({
  name = "policy-example", usage = USAGE,
  { "-d", "--duration", key = "duration", kind = "number", min = 0.001, default = 20 },
  { nil, "--hot", key = "hot", kind = "integer", min = 1, default = 3 },
  { nil, "--fast", key = "fast", kind = "frequency", default = 499 },
  { nil, "--slow", key = "slow", kind = "frequency", default = 19 },
  { nil, "--every", key = "every", kind = "number", min = 0.01, default = 2 },
}, arg)

local s, err = lupe.session{ frequency = o.slow }
if not s then
  io.stderr:write("lupe policy-example: ", tostring(err), "\n")
  return 1
end
local p = policy.new(s)
p:rates{ default = o.slow }
local history = {}

s:on_interval(o.every, function(batch)
  -- Samples per pid in this interval, weighted back by each pid's current 1-in-N, so a
  -- slow process is not judged cold just because most of its samples were skipped.
  local per, names = {}, {}
  local cur = p.wanted and p.wanted.pids or {}
  for k = 1, #batch do
    local pid = batch:pid(k)
    local w = policy.every(s:frequency(), cur[pid] or o.slow)
    per[pid] = (per[pid] or 0) + batch:count(k) * w
    names[pid] = batch:comm(k)
  end
  local list = {}
  for pid, n in pairs(per) do list[#list + 1] = { pid, n } end
  table.sort(list, function(a, b) return a[2] > b[2] end)
  local fast, desc = {}, {}
  for k = 1, math.min(o.hot, #list) do
    fast[list[k][1]] = o.fast
    desc[#desc + 1] = ("%s[%d]"):format(names[list[k][1]], list[k][1])
  end
  p:rates{ default = o.slow, pids = fast }
  history[#history + 1] = table.concat(desc, " ")
end)

local profile = s:run{ duration = o.duration }
local st = s:stats()
s:close()
io.stdout:write("hot sets, one per interval:\n")
for k, h in ipairs(history) do io.stdout:write(("  %3d  %s\n"):format(k, h)) end
io.stdout:write(("\n%d samples kept, %d skipped by rates\n\n"):format(st.samples, st.rate_skipped))
require("lupe.output").get("top").write(profile, io.stdout, { top = 15 })
return 0
