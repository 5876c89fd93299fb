#!/bin/bash
# unwind_bench.sh: what native unwinding (stack deltas in BPF) costs. Prints figures and
# asserts nothing. Run as root; about a minute and a half, never more than 3.
#
#   sudo bench/unwind_bench.sh           # uses build/lupe; LUPE=/path/to/lupe to change
#   REPS=3 sudo bench/unwind_bench.sh    # repetitions of the slowdown runs (default 5;
#                                        # the time budget may cut them)
#
# 1. BPF time per sample with 128-frame stacks: two recursion workloads 200 calls deep
#    (tests/fixtures/src/unwind_work.c, -fomit-frame-pointer), one per CPU, profiled by
#    `lupe record -F 999 -p`; the sampler's run_time_ns / run_cnt in eight 0.3 s windows
#    of steady state (kernel.bpf_stats_enabled, what lupe_tracer_opts.prog_stats turns
#    on). Also a 20-frame chain, the frame-pointer sampler (--fp) on it for reference
#    (this machine's speed varies by 3x with its neighbours' load), and the mean depth.
# 2. BPF map memory for a whole-system profile: `lupe record -d 8` while a mix of
#    programs runs (the workloads above, a C++ program, shells, python if present), the
#    memlock of every map the lupe process holds (bpftool map show), in total and for
#    the unwinder's maps alone.
# 3. Slowdown of a fixed-work two-thread program (3 s of CPU per thread, no frame
#    pointers) at 999 Hz: unprofiled, under `lupe record`, `lupe record --fp` (the
#    frame-pointer sampler: what sampling costs without the unwinder) and `perf record
#    --call-graph dwarf -e cpu-clock`, interleaved in every repetition. The workload's
#    own CPU (GNU time around it, inside the profiler: the sampling interrupts are charged
#    to it), the profiler's CPU on top, and the size of each profile. Medians.
set -u
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
LUPE=${LUPE:-$repo/build/lupe}
case $LUPE in /*) ;; *) LUPE=$PWD/$LUPE ;; esac
REPS=${REPS:-5}
BUDGET=170              # s, for the whole script
start=$SECONDS

die() { echo "unwind_bench: $*" >&2; exit 1; }
left() { echo $((BUDGET - (SECONDS - start))); }

[ "$(id -u)" = 0 ] || die "run as root (BPF and perf need it)"
[ -x "$LUPE" ] || die "no lupe at $LUPE (build it, or set LUPE=)"
command -v bpftool >/dev/null || die "needs bpftool"
command -v python3 >/dev/null || die "needs python3 (to read bpftool's JSON)"
if [ ! -x /usr/bin/perf ]; then
	apt-get install -y linux-perf >/dev/null 2>&1 || die "cannot install linux-perf"
fi
if [ ! -x /usr/bin/time ]; then
	apt-get install -y time >/dev/null 2>&1 || die "cannot install GNU time"
fi

tmp=$(mktemp -d /tmp/unwind_bench.XXXXXX) || die "mktemp failed"
stats_was=$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null || echo 0)
cleanup() {
	sysctl -q kernel.bpf_stats_enabled="$stats_was" 2>/dev/null
	jobs -p | xargs -r kill 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp" || die "cannot enter $tmp"

CFLAGS=(-O2 -g -fomit-frame-pointer -pthread)
gcc "${CFLAGS[@]}" -o unwind_work "$repo/tests/fixtures/src/unwind_work.c" || die "cannot build unwind_work"
g++ -O2 -g -fomit-frame-pointer -o unwind_exc "$repo/tests/fixtures/src/unwind_exc.cpp" ||
	die "cannot build unwind_exc"
# The fixed-work program: two threads, each a chain of six calls to the same spin.
cat >work.c <<'EOF'
#include <pthread.h>
#include <stdlib.h>

#define KEEP __attribute__((noipa))
static long rounds;

KEEP unsigned long spin(unsigned long x)
{
	int i;

	for (i = 0; i < 20000; i++) {
		x = x * 6364136223846793005UL + 1442695040888963407UL;
		__asm__ volatile("" : "+r"(x));
	}
	return x;
}
KEEP unsigned long l5(unsigned long x) { return spin(x) + 5; }
KEEP unsigned long l4(unsigned long x) { return l5(x) + 4; }
KEEP unsigned long l3(unsigned long x) { return l4(x) + 3; }
KEEP unsigned long l2(unsigned long x) { return l3(x) + 2; }
KEEP unsigned long l1(unsigned long x) { return l2(x) + 1; }

KEEP void *loop(void *arg)
{
	unsigned long x = (unsigned long)arg;
	long i;

	for (i = 0; i < rounds; i++)
		x = l1(x);
	return (void *)x;
}

int main(int argc, char **argv)
{
	pthread_t a, b;

	if (argc < 2)
		return 2;
	rounds = atol(argv[1]);
	pthread_create(&a, NULL, loop, (void *)1);
	pthread_create(&b, NULL, loop, (void *)2);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	return 0;
}
EOF
gcc "${CFLAGS[@]}" -o work work.c || die "cannot build the fixed-work workload"

# calc EXPR [DECIMALS]: an arithmetic expression, printed.
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2); else print 0 }'; }

# The cumulative run time and count of the perf_event program lupe process $1 holds:
# "ns count", from its fdinfo (other lupe processes may run: theirs have the same name).
prog_stats() {
	awk '/^prog_type:/ { t = $2 } /^run_time_ns:/ { ns = $2 } /^run_cnt:/ { n = $2 }
		END { if (t == 7) print ns, n }' $(grep -l '^prog_type:[[:space:]]*7$' /proc/"$1"/fdinfo/* 2>/dev/null) 2>/dev/null
}

# Mean user frames per sample of comm in a folded file (frames but the comm and kernel).
mean_depth() {
	awk -v c="$2;" 'index($0, c) == 1 {
		n = $NF; sub(/ [0-9]+$/, ""); k = split($0, f, ";"); u = 0
		for (i = 2; i <= k; i++) if (f[i] !~ /_\[k\]$/) u++
		s += u * n; t += n
	} END { if (t) printf "%.1f", s / t; else print "-" }' "$1"
}

# ---- 1. BPF time per sample -------------------------------------------------------------

# CPU time the hypervisor gave to others while we wanted it, in jiffies (/proc/stat).
steal() { awk '/^cpu / { print $9 }' /proc/stat; }

# bpf_time LABEL MODE ARGS...: two workloads (one per CPU) profiled by pid for 4.5 s; the
# sampler's statistics in eight windows of 0.3 s from 1.2 s on. run_time_ns is wall time:
# a vCPU the host preempts inside a run inflates it, so the least disturbed window (min)
# says what a run costs, the median what this machine gave.
bpf_time() {
	local label=$1 a b lp w s0 s1 st0 per=()
	shift
	./unwind_work "$@" &
	a=$!
	./unwind_work "$@" &
	b=$!
	sleep 0.4
	sysctl -q kernel.bpf_stats_enabled=1
	"$LUPE" record -F 999 -d 4.5 ${RECORD_OPTS:-} -p "$a,$b" -o "$tmp/$label.folded" \
		2>"$tmp/$label.err" &
	lp=$!
	sleep 1.2
	s0=$(prog_stats "$lp")
	st0=$(steal)
	for w in 1 2 3 4 5 6 7 8; do
		sleep 0.3
		s1=$(prog_stats "$lp")
		per+=("$(echo "$s0 $s1" | awk 'NF == 4 && $4 > $2 { printf "%.0f", ($3 - $1) / ($4 - $2) }')")
		s0=$s1
	done
	wait "$lp"
	sysctl -q kernel.bpf_stats_enabled="$stats_was"
	kill "$a" "$b" 2>/dev/null
	wait "$a" "$b" 2>/dev/null
	per=($(printf '%s\n' "${per[@]}" | grep . | sort -g))
	[ ${#per[@]} -gt 0 ] || { printf "  %-24s no runs counted\n" "$label"; return; }
	printf "  %-24s %5s ns per run (min of %d windows), median %s; mean depth %s frames;" \
		"$label" "${per[0]}" ${#per[@]} "$(printf '%s\n' "${per[@]}" | median)" \
		"$(mean_depth "$tmp/$label.folded" unwind_work)"
	printf " steal %s%%\n" "$(calc "($(steal) - $st0) / ($(getconf CLK_TCK) * 2.4 * $(nproc)) * 100" 0)"
}

echo "1. BPF time per sample (lupe_sample run_time_ns / run_cnt, 999 Hz, both CPUs busy)"
bpf_time "recursion, 128 frames" recurse 6000 200
bpf_time "chain, 20 frames" chain 6000
# The same machine, the same minute: the frame-pointer sampler (bpf_get_stack), whose
# walk of this code without frame pointers stops after a frame or two.
RECORD_OPTS=--fp bpf_time "chain, --fp (reference)" chain 6000

# ---- 2. map memory, whole system ----------------------------------------------------------

echo
echo "2. BPF map memory of a whole-system profile (lupe record -d 8, memlock per map at 5 s)"
mix=()
./unwind_work threads 8000 & mix+=($!)
./unwind_exc 8000 >/dev/null & mix+=($!)
./unwind_work qsort 8000 & mix+=($!)
( for i in $(seq 200); do sh -c 'ls /usr/lib >/dev/null; true'; sleep 0.02; done ) & mix+=($!)
if command -v python3 >/dev/null; then
	python3 -c 'import time, json
t = time.time() + 8
while time.time() < t: json.dumps([list(range(100)) for _ in range(100)])' & mix+=($!)
fi
"$LUPE" record -F 999 -d 8 -o "$tmp/system.folded" 2>"$tmp/system.err" &
lp=$!
sleep 5
# Every map lupe holds a descriptor of (the sampler's, and the slot chunks the unwinder
# made), once each, with its memlock from fdinfo; names from bpftool, whose listing of
# all maps gives up when one goes away meanwhile (so: retried).
python3 - "$lp" <<'PY'
import glob, json, subprocess, sys
mine = {}
for f in glob.glob("/proc/%s/fdinfo/*" % sys.argv[1]):
    try:
        kv = dict(l.split(":", 1) for l in open(f) if ":" in l)
    except OSError:
        continue
    if "map_id" in kv:
        mine[int(kv["map_id"])] = int(kv.get("memlock", "0"))
names = {}
for _ in range(10):
    try:
        out = subprocess.run(["bpftool", "map", "show", "-j"], capture_output=True, text=True).stdout
        names = {m["id"]: m.get("name", "?") for m in json.loads(out) if "id" in m}
    except (ValueError, OSError):
        names = {}
    if all(i in names for i in mine):
        break
rows = [(names.get(i, "?"), b) for i, b in mine.items()]
tot = sum(b for _, b in rows)
unw = sum(b for n, b in rows if n.startswith(("unwind_", "lupe_slots")))
chunks = sum(1 for n, _ in rows if n == "lupe_slots")
print("  all maps of lupe: %.1f MiB in %d maps; the unwinder's: %.1f MiB (%d slot chunks)"
      % (tot / 2**20, len(rows), unw / 2**20, chunks))
big = sorted(rows, key=lambda r: -r[1])[:8]
print("  largest: " + ", ".join("%s %.1f MiB" % (n, b / 2**20) for n, b in big))
PY
wait "$lp"
kill "${mix[@]}" 2>/dev/null
wait "${mix[@]}" 2>/dev/null
comms=$(awk '{ sub(/;.*/, ""); c[$1] = 1 } END { print length(c) }' "$tmp/system.folded")
errs=$(awk '/unwind error/ { e += $NF } { t += $NF } END { printf "%d of %d", e, t }' "$tmp/system.folded")
echo "  $comms commands sampled; samples ending in an unwinding error: $errs"
sed -n 's/^lupe record: /  lupe: /p' "$tmp/system.err" | tail -n 1

# ---- 3. slowdown and output size ----------------------------------------------------------

echo
echo "3. a fixed-work two-thread program (3 s of CPU per thread), 999 Hz, $REPS repetitions"
/usr/bin/time -f '%U' -o calib.time ./work 20000 || die "the fixed-work workload failed"
ROUNDS=$(tail -n 1 calib.time | awk '{ printf "%d", ($1 > 0.05 ? 20000 * 3 / ($1 / 2) : 100000) }')
cpu_of() { tail -n 1 "$1" | awk '{ print $2 + $3 }'; }
WL=(/usr/bin/time -f '%e %U %S' -o)
: >none.cpu
for who in lupe fp perf; do : >$who.cpu; : >$who.prof; : >$who.size; done
for r in $(seq "$REPS"); do
	[ "$(left)" -gt 45 ] || { echo "  (stopped after $((r - 1)) repetitions: time budget)"; break; }
	"${WL[@]}" n.wl ./work "$ROUNDS"
	cpu_of n.wl >>none.cpu
	/usr/bin/time -f '%e %U %S' -o l.time "$LUPE" record -F 999 -o l.folded -- \
		"${WL[@]}" l.wl ./work "$ROUNDS" 2>l.err
	cpu_of l.wl >>lupe.cpu
	awk -v a="$(cpu_of l.time)" -v b="$(cpu_of l.wl)" 'BEGIN { print a - b }' >>lupe.prof
	stat -c %s l.folded >>lupe.size
	/usr/bin/time -f '%e %U %S' -o f.time "$LUPE" record --fp -F 999 -o f.folded -- \
		"${WL[@]}" f.wl ./work "$ROUNDS" 2>f.err
	cpu_of f.wl >>fp.cpu
	awk -v a="$(cpu_of f.time)" -v b="$(cpu_of f.wl)" 'BEGIN { print a - b }' >>fp.prof
	stat -c %s f.folded >>fp.size
	/usr/bin/time -f '%e %U %S' -o p.time perf record -q -F 999 --call-graph dwarf -e cpu-clock \
		-o p.data -- "${WL[@]}" p.wl ./work "$ROUNDS" 2>p.err
	cpu_of p.wl >>perf.cpu
	awk -v a="$(cpu_of p.time)" -v b="$(cpu_of p.wl)" 'BEGIN { print a - b }' >>perf.prof
	stat -c %s p.data >>perf.size
	rm -f p.data
done
none=$(median <none.cpu)
for who in lupe fp perf; do
	cpu=$(median <$who.cpu)
	printf "  %-5s workload CPU %s s (x%s unprofiled), profiler CPU %s s, output %s\n" \
		"$who" "$(calc "$cpu" 2)" "$(calc "$cpu / $none" 3)" "$(calc "$(median <$who.prof)" 2)" \
		"$(median <$who.size | awk '{ if ($1 >= 1e6) printf "%.1f MB", $1 / 1e6; else printf "%.1f KB", $1 / 1e3 }')"
done
printf "  none  workload CPU %s s\n" "$(calc "$none" 2)"
good=$(awk '/^work;/ { t += $NF; if ($0 ~ /;main;/ && $0 ~ /;l1;l2;l3;l4;l5;spin/ || $0 ~ /start_thread;loop;l1;l2;l3;l4;l5;spin/) g += $NF }
	END { if (t) printf "%d of %d (%.1f%%)", g, t, 100 * g / t }' l.folded)
echo "  lupe's last profile: samples with the whole chain to start_thread: $good"
echo
echo "(took $((SECONDS - start)) s)"
