-- APM correlation end to end: the fixture app (tests/fixtures/apm) hosts the fake agent,
-- runs transactions on two worker threads and logs every datagram it receives; lupe
-- profiles it with real BPF. The agent's log is the oracle: each message must name a
-- transaction the app really ran (with that transaction's trace ID), a trace hash lupe
-- reports for the process, and the counts must add up to the samples lupe took inside
-- transactions. Needs root for BPF and an x86-64 host (the fixture's TLS descriptor).
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local t = dofile(dir .. "/harness.lua")
local check = t.check
local lupe = require "lupe"

local SERVICE = "lupe-test-svc"
local tmp, apps = nil, {}

local function needs_fixture()
  if not t.is_root() then t.skip("needs root to load BPF programs") end
  if jit.arch ~= "x64" then t.skip("the fixture agent's TLS descriptor is x86-64 only") end
  if tmp then return end
  tmp = t.tmpdir()
  local fx = t.fixtures .. "/apm"
  t.build({
    ("cc -O1 -fPIC -mtls-dialect=gnu2 -shared -Wl,-soname,elastic-jvmti-linux-x86_64.so " ..
     "-o %s/elastic-jvmti-linux-x86_64.so %s/agent.c"):format(tmp, fx),
    ("cc -O1 -pthread -o %s/app %s/app.c %s/elastic-jvmti-linux-x86_64.so " ..
     "-Wl,-rpath,'$ORIGIN'"):format(tmp, fx, tmp),
  })
end

local function lines_of(path, prefix)
  local out = {}
  local f = io.open(path)
  if not f then return out end
  for line in f:lines() do
    if line:sub(1, #prefix) == prefix then out[#out + 1] = line end
  end
  f:close()
  return out
end

-- Starts the app with its own socket and log; returns pid, log path.
local function start_app(tag)
  local log, sock = ("%s/%s.log"):format(tmp, tag), ("%s/%s.sock"):format(tmp, tag)
  local p = assert(io.popen(("%s/app --log %s --socket %s --bind --threads 2 --tx-ms 15 " ..
    "--seconds 60 >/dev/null 2>&1 & echo $!"):format(tmp, log, sock)))
  local pid = tonumber(p:read("*l"))
  p:close()
  apps[#apps + 1] = pid
  for _ = 1, 500 do
    if #lines_of(log, "ready ") > 0 then return pid, log end
    os.execute("sleep 0.01")
  end
  error("the fixture app did not get ready")
end

-- Waits until the app logged n messages (the receiver thread lags the sender a little).
local function messages(log, n)
  local msgs
  for _ = 1, 300 do
    msgs = lines_of(log, "msg ")
    if #msgs >= n then break end
    os.execute("sleep 0.01")
  end
  local out = {}
  for i, l in ipairs(msgs) do
    local len, typ, minor, trace, tx, stack, count =
      l:match("^msg len=(%d+) type=(%d+) minor=(%d+) trace=(%x+) tx=(%x+) stack=(%x+) count=(%d+)$")
    check(len, "unparsable message line: %s", l)
    out[i] = { len = tonumber(len), type = tonumber(typ), minor = tonumber(minor), trace = trace,
               tx = tx, stack = stack, count = tonumber(count) }
  end
  return out
end

-- The transactions the app ran: tx ID -> trace ID.
local function transactions(log)
  local txs = {}
  for _, l in ipairs(lines_of(log, "tx ")) do
    local trace, tx = l:match("trace=(%x+) tx=(%x+)")
    txs[tx] = trace
  end
  return txs
end

-- Checks every message against the app's transactions and lupe's traces; returns the sum
-- of their counts and the number of distinct transactions named.
local function check_messages(msgs, txs, counts_by_hash)
  local sum, seen, ntx, per_hash = 0, {}, 0, {}
  for _, m in ipairs(msgs) do
    check(m.len == 46 and m.type == 1 and m.minor == 1, "bad header: len %d type %d minor %d",
      m.len, m.type, m.minor)
    check(txs[m.tx], "transaction %s was never run by the app", m.tx)
    check(txs[m.tx] == m.trace, "transaction %s came with trace %s, the app's is %s", m.tx,
      m.trace, txs[m.tx])
    check(counts_by_hash[m.stack], "stack hash %s is not one lupe reported", m.stack)
    check(m.count > 0, "a message with count 0")
    sum = sum + m.count
    per_hash[m.stack] = (per_hash[m.stack] or 0) + m.count
    if not seen[m.tx] then seen[m.tx] = true ntx = ntx + 1 end
  end
  -- Samples in transactions are a part of the samples of that trace.
  for h, n in pairs(per_hash) do
    check(n <= counts_by_hash[h], "hash %s: %d samples notified, %d in the profile", h, n,
      counts_by_hash[h])
  end
  return sum, ntx
end

t.case("a session tells the agent each trace sampled in each transaction, counts exact", function()
  needs_fixture()
  local pid, log = start_app("session")
  local s = assert(lupe.session{ frequency = 199, target = { pids = { pid } } })
  local p = s:run{ duration = 2 }
  s:close()
  local st = p.stats
  local a = st.apm
  check(a.agents_found == 1 and a.libs_detected >= 1, "agent not found: %d found, %d libs",
    a.agents_found, a.libs_detected)
  check(a.sent > 0, "nothing sent (%d samples in transactions)", a.samples)
  -- The agent's queue is short (net.unix.max_dgram_qlen, 10 by default) and its receiver
  -- competes with two busy workers: some datagrams may be dropped, never waited for.
  check(a.errors == 0 and a.no_socket == 0 and a.tally_errors == 0 and a.no_transaction == 0,
    "errors %d, no socket %d, tally errors %d, zero transactions %d", a.errors, a.no_socket,
    a.tally_errors, a.no_transaction)
  local counts_by_hash, total = {}, 0
  for _, e in ipairs(p.entries) do
    check(e.pid == pid, "an entry of pid %d", e.pid)
    check(e.service == SERVICE, "entry without the service name: %s", tostring(e.service))
    counts_by_hash[e.hash] = (counts_by_hash[e.hash] or 0) + e.count
    total = total + e.count
  end
  local msgs = messages(log, a.sent)
  check(#msgs == a.sent, "%d messages sent, %d received", a.sent, #msgs)
  local sum, ntx = check_messages(msgs, transactions(log), counts_by_hash)
  -- Exact: the messages received carry every sample lupe took in a transaction, except
  -- those of the datagrams counted as dropped.
  check(a.notified == a.samples, "notified %d of %d", a.notified, a.samples)
  check(sum == a.sent_samples, "messages count %d samples, lupe sent %d", sum, a.sent_samples)
  check(sum + a.dropped_samples == a.samples,
    "messages count %d samples + %d dropped, lupe took %d in transactions (%d datagrams dropped)",
    sum, a.dropped_samples, a.samples, a.dropped)
  -- BPF read the IDs of every sample user space got, and of those still in the ring when
  -- the counters were read (sampling goes on until the session closes).
  check(a.bpf_read >= a.samples, "BPF read %d, user space got %d", a.bpf_read, a.samples)
  -- Two CPU-bound workers in 15 ms transactions for 2 s: most samples are in one, and
  -- many transactions were sampled.
  check(a.samples > total / 2, "only %d of %d samples in transactions", a.samples, total)
  check(ntx > 10, "only %d transactions named", ntx)
  print(("     %d of %d samples in %d transactions; %d datagrams sent (%d samples), %d dropped " ..
    "(%d samples)"):format(a.samples, total, ntx, a.sent, a.sent_samples, a.dropped,
    a.dropped_samples))
end)

t.case("lupe record -f json labels the samples with service.name", function()
  needs_fixture()
  local pid, log = start_app("record")
  local out, raw = tmp .. "/out.json", tmp .. "/out.raw"
  local status, _, err = t.run(("%s record -F 199 -d 1.5 -f json -o %s --raw %s -p %d")
    :format(t.bin, out, raw, pid))
  check(status == 0, "record exited %s: %s", status, err)
  check(err:match("APM: 1 agents %(services: 1%), %d+ samples in transactions"),
    "no APM summary on stderr: %s", err)
  local counts_by_hash, n = {}, 0
  for line in io.lines(out) do
    if line:find('"pid":', 1, true) then
      n = n + 1
      local svc = line:match('"service":"([^"]*)"')
      check(svc == SERVICE, "entry without the service: %s", line:sub(1, 120))
      local h, c = line:match('"hash":"(%x+)"'), line:match('"count":(%d+)')
      counts_by_hash[h] = (counts_by_hash[h] or 0) + tonumber(c)
    end
  end
  check(n > 0, "no entries in the JSON output")
  local msgs = messages(log, 1)
  check(#msgs > 0, "the agent received nothing")
  check_messages(msgs, transactions(log), counts_by_hash)

  -- The recording replays with the same service labels (SERVICE records), and a filter
  -- on service keeps the same entries offline as live.
  local again = tmp .. "/replayed.json"
  local rstatus, _, rerr = t.run(("LUPE_REPLAY=%s %s record -f json -o %s"):format(raw, t.bin, again))
  check(rstatus == 0, "replay exited %s: %s", rstatus, rerr)
  local live, replayed = assert(t.slurp(out)), assert(t.slurp(again))
  check(live == replayed, "replayed JSON differs from live:\n%s\n---\n%s", live:sub(1, 600),
    replayed:sub(1, 600))
  local s = assert(lupe.session{ replay = raw })
  s:filter("service ~ 'lupe-test-*'")
  local p = s:run{}
  s:close()
  local kept = 0
  for _, e in ipairs(p.entries) do
    check(e.service == SERVICE, "pid %d (service %s) kept by the replayed filter", e.pid,
      tostring(e.service))
    kept = kept + e.count
  end
  check(kept > 0 and kept == p.stats.samples - p.stats.filtered_by_script,
    "the replayed filter kept %d of %d samples", kept, p.stats.samples)
end)

t.case("a filter on service keeps the agent's process and drops the others", function()
  needs_fixture()
  local pid = start_app("filter")
  local other = assert(io.popen("sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!"))
  local opid = tonumber(other:read("*l"))
  other:close()
  apps[#apps + 1] = opid
  local s = assert(lupe.session{ frequency = 199, target = { pids = { pid, opid } } })
  s:filter("service ~ 'lupe-test-*'")
  local p = s:run{ duration = 1 }
  s:close()
  local kept = 0
  for _, e in ipairs(p.entries) do
    check(e.pid == pid and e.service == SERVICE, "pid %d (service %s) got through", e.pid,
      tostring(e.service))
    kept = kept + e.count
  end
  check(kept > 10, "only %d samples of the agent's process", kept)
  check(p.stats.filtered_by_script > 0, "the other process was not filtered out (%d)",
    p.stats.filtered_by_script)
end)

local rc = t.run_all()
for _, pid in ipairs(apps) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
if tmp then os.execute("rm -rf " .. tmp) end
return rc
