#!/bin/bash
# record_bench.sh: what `lupe record` costs a CPU-bound command and the machine, next to
# `perf record`, and how soon it samples. Prints a table and asserts nothing
# (bench/README.md says how to read it). Run as root; about 2 minutes, never more than 3.
#
#   sudo bench/record_bench.sh            # uses build/lupe; LUPE=/path/to/lupe to change
#   REPS=5 sudo bench/record_bench.sh     # repetitions per condition (default 3; the
#                                         # 3-minute budget may cut them)
#
# Workload: tests/fixtures/src/hot.c, `hot 3000 two` (two CPU-bound threads for 3 s).
# Conditions, interleaved in every repetition so load changes hit them alike:
#   a  unprofiled
#   b  lupe record -F 999 -o FILE -- hot 3000 two
#   c  perf record -F 999 -g -e cpu-clock -o FILE -- hot 3000 two
#   d  lupe record -F 99 -o FILE -- hot 3000 two
#   e  lupe record -F 999 -d 3 -o FILE (whole system) while hot runs
#   f  perf record -a -g -F 999 -e cpu-clock -o FILE -- sleep 3, while hot runs
# hot spins for a fixed time, so its run time and CPU cannot show a slowdown: sampling
# costs it work, not time. Three more conditions run a fixed amount of work instead
# (`work N`: two threads of N spins each, calibrated to 3 s of CPU per thread here), where a
# slowdown shows:
#   g  unprofiled    h  lupe record -F 999 -- work N    i  perf record -F 999 -g -- work N
# Every workload runs under its own GNU time, so its CPU is known in every condition:
# profiler CPU = the command tree's CPU minus the workload's (b c d h i) or the profiler's
# own GNU time (e f). Wall times come from $EPOCHREALTIME around each command.
set -u
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
LUPE=${LUPE:-$repo/build/lupe}
case $LUPE in /*) ;; *) LUPE=$PWD/$LUPE ;; esac
REPS=${REPS:-3}
MS=3000                 # hot's run time
LIMIT=60                # no single command may run longer (s)
BUDGET=180              # s, for the whole script

die() { echo "record_bench: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (BPF and perf -a need it)"
[ -x "$LUPE" ] || die "no lupe at $LUPE (build it, or set LUPE=)"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash >= 5 (\$EPOCHREALTIME)"
if [ ! -x /usr/bin/perf ]; then
	apt-get install -y linux-perf >/dev/null || die "cannot install linux-perf"
fi
if [ ! -x /usr/bin/time ]; then
	apt-get install -y time >/dev/null || die "cannot install GNU time"
fi
command -v clang >/dev/null || die "needs clang to build the workloads"

tmp=$(mktemp -d /tmp/record_bench.XXXXXX) || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || die "cannot enter $tmp"

# As the header of hot.c says: clang keeps frame pointers even in leaves.
CFLAGS=(-O2 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -pthread)
clang "${CFLAGS[@]}" -o hot "$repo/tests/fixtures/src/hot.c" || die "cannot build hot.c"
# The fixed-work twin of `hot MS two`: the same spin, counted instead of timed.
cat >work.c <<'EOF'
#include <pthread.h>
#include <stdlib.h>

static long rounds;

__attribute__((noinline, used)) static unsigned long work_spin(unsigned long x)
{
	int i;

	for (i = 0; i < 20000; i++) {
		x = x * 6364136223846793005UL + 1442695040888963407UL;
		__asm__ volatile("" : "+r"(x));
	}
	return x;
}

__attribute__((noinline, used)) static void *work_loop(void *arg)
{
	unsigned long x = (unsigned long)arg;
	long i;

	for (i = 0; i < rounds; i++)
		x = work_spin(x);
	return (void *)x;
}

int main(int argc, char **argv)
{
	pthread_t a, b;

	if (argc < 2)
		return 2;
	rounds = atol(argv[1]);
	pthread_create(&a, NULL, work_loop, (void *)1);
	pthread_create(&b, NULL, work_loop, (void *)2);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	return 0;
}
EOF
clang "${CFLAGS[@]}" -o work work.c || die "cannot build the fixed-work workload"
HOT=$tmp/hot
WORK=$tmp/work
TIMEFMT='%e %U %S %M'

fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f\n", b - a }'; }
fadd() { awk -v a="$1" -v b="$2" 'BEGIN { print a + b }'; }

# Calibrate `work` on CPU time, which other load does not stretch: rounds for 3 s of CPU
# per thread (3 s of wall on an otherwise idle 2-CPU machine).
/usr/bin/time -f '%U' -o calib.time "$WORK" 20000 || die "the fixed-work workload failed"
ROUNDS=$(tail -n 1 calib.time | awk '{ printf "%d", ($1 > 0.05 ? 20000 * 3 / ($1 / 2) : 100000) }')

# run_timed PREFIX CMD...: PREFIX.wall (s), PREFIX.time (GNU time), PREFIX.err (stderr).
run_timed() {
	local p=$1 t0
	shift
	t0=$EPOCHREALTIME
	timeout "$LIMIT" /usr/bin/time -f "$TIMEFMT" -o "$p.time" "$@" >"$p.out" 2>"$p.err"
	fsub "$t0" "$EPOCHREALTIME" >"$p.wall"
}

# The workload under its own GNU time (PREFIX.wl), in the array WL.
wl_hot() { WL=(/usr/bin/time -f "$TIMEFMT" -o "$1.wl" "$HOT" "$MS" two); }
wl_work() { WL=(/usr/bin/time -f "$TIMEFMT" -o "$1.wl" "$WORK" "$ROUNDS"); }

# Samples of a comm in a folded file or a perf.data.
folded_n() { awk -v c="$2;" 'index($0, c) == 1 { n += $NF } END { print n + 0 }' "$1" 2>/dev/null; }
perf_n() { perf script -i "$1" -F comm 2>/dev/null | awk -v c="$2" '$1 == c' | wc -l; }
size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }
lupe_lost() { sed -n 's/.* samples (\([0-9]*\) lost.*/\1/p' "$1" | tail -n 1; }
cpu_of() { tail -n 1 "$1" | awk '{ print $2 + $3 }'; }
rss_of() { tail -n 1 "$1" | awk '{ print $4 }'; }

# res PREFIX wall cpu prof_cpu prof_rss_kb wl_cpu out_bytes samples lost: PREFIX.res, where
# wall and cpu are the command tree's (a b c d g h i) or the workload's alone (e f).
res() {
	local p=$1
	shift
	echo "$@" >"$p.res"
}

# A command profiled (or not): PROFILER... -- workload. $1 prefix, $2 workload kind,
# $3 output file or "", $4 comm, $5 "lupe" | "perf" | "none", then the profiler command.
cond_cmd() {
	local p=$1 kind=$2 out=$3 comm=$4 who=$5 tree wl n lost=-
	shift 5
	"wl_$kind" "$p"
	if [ "$who" = none ]; then
		run_timed "$p" "${WL[@]:5}"     # the workload without its inner GNU time
		cp "$p.time" "$p.wl"
	else
		run_timed "$p" "$@" -- "${WL[@]}"
	fi
	tree=$(cpu_of "$p.time") wl=$(cpu_of "$p.wl")
	case $who in
	lupe) n=$(folded_n "$out" "$comm") lost=$(lupe_lost "$p.err") ;;
	perf) n=$(perf_n "$out" "$comm") ;;
	none) n=- ;;
	esac
	res "$p" "$(cat "$p.wall")" "$tree" "$(fsub "$wl" "$tree")" "$(rss_of "$p.time")" \
		"$wl" "$( [ -n "$out" ] && size_of "$out" || echo -)" "$n" "$lost"
}

# Whole system: hot in the background, the profiler in the foreground.
cond_system() {
	local p=$1 who=$2 out bg n lost=-
	wl_hot "$p"
	(
		t0=$EPOCHREALTIME
		"${WL[@]}"
		fsub "$t0" "$EPOCHREALTIME" >"$p.wlwall"
	) &
	bg=$!
	if [ "$who" = lupe ]; then
		out=$tmp/e.folded
		run_timed "$p" "$LUPE" record -F 999 -d 3 -o "$out"
	else
		out=$tmp/f.data
		run_timed "$p" perf record -a -g -F 999 -e cpu-clock -o "$out" -- sleep 3
	fi
	wait "$bg"
	if [ "$who" = lupe ]; then
		n=$(folded_n "$out" hot) lost=$(lupe_lost "$p.err")
	else
		n=$(perf_n "$out" hot)
	fi
	res "$p" "$(cat "$p.wlwall")" "$(cpu_of "$p.wl")" "$(cpu_of "$p.time")" \
		"$(rss_of "$p.time")" "$(cpu_of "$p.wl")" "$(size_of "$out")" "$n" "$lost"
}

# Start-up + flush: profiling `true`.
cond_true() {
	run_timed "$tmp/t.$1.lupe" "$LUPE" record -F 999 -o "$tmp/t.folded" -- true
	run_timed "$tmp/t.$1.perf" perf record -F 999 -g -e cpu-clock -o "$tmp/t.data" -- true
}

# First sample: a `lupe run` probe, through the same session API as lupe record, prints
# the realtime at script start, once the sampler is attached and the command started (its
# samples are taken from then on), and when the first of them reaches the aggregate
# (after conversion and symbolization; the first kernel frame loads kallsyms).
cat >first.lua <<'EOF'
local ffi = require "ffi"
ffi.cdef[[ struct record_bench_ts { long sec; long nsec; };
           int clock_gettime(int clk, struct record_bench_ts *ts); ]]
local ts = ffi.new("struct record_bench_ts")
local function rt() ffi.C.clock_gettime(0, ts) return tonumber(ts.sec) + tonumber(ts.nsec) / 1e9 end
local t_script = rt()
local lupe = require "lupe"
local s = assert(lupe.session{ frequency = tonumber(arg[1]), target = { command = { unpack(arg, 2) } } })
local t_ready, t_first = rt(), nil
s:on_interval(0.001, function(batch)
  if t_first then return end
  for i = 1, #batch do
    if batch:pid(i) == s.command_pid then t_first = rt() return end
  end
end)
s:run{ poll_ms = 1, stop = function() return t_first ~= nil end }
s:close()
print(("%.6f %.6f %.6f"):format(t_script, t_ready, t_first or 0))
EOF

cond_first() {
	local p=$tmp/p.$1 t0
	t0=$EPOCHREALTIME
	timeout "$LIMIT" "$LUPE" run first.lua 999 "$HOT" 1000 >"$p.out" 2>"$p.err"
	awk -v t0="$t0" '{ printf "%.1f %.1f %.1f\n", ($1 - t0) * 1e3, ($2 - t0) * 1e3,
			   ($3 > 0 ? ($3 - t0) * 1e3 : -1) }' "$p.out" >"$p.res"
}

echo "record_bench: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "lupe: $LUPE ($("$LUPE" version 2>/dev/null | head -n 1)); $(perf --version)"
echo "workloads: hot $MS two; work $ROUNDS (calibrated); up to $REPS repetitions, median"
rep_time=0
done_reps=0
for r in $(seq 1 "$REPS"); do
	if [ $((SECONDS + rep_time)) -gt "$BUDGET" ]; then
		echo "the ${BUDGET}s budget allows no more repetitions"
		break
	fi
	rep_start=$SECONDS
	printf 'repetition %d:' "$r"
	cond_cmd "$tmp/a.$r" hot "" hot none;                                       printf ' a'
	cond_cmd "$tmp/b.$r" hot "$tmp/b.folded" hot lupe "$LUPE" record -F 999 -o "$tmp/b.folded"; printf ' b'
	cond_cmd "$tmp/c.$r" hot "$tmp/c.data" hot perf perf record -F 999 -g -e cpu-clock -o "$tmp/c.data"; printf ' c'
	cond_cmd "$tmp/d.$r" hot "$tmp/d.folded" hot lupe "$LUPE" record -F 99 -o "$tmp/d.folded"; printf ' d'
	cond_system "$tmp/e.$r" lupe;                                               printf ' e'
	cond_system "$tmp/f.$r" perf;                                               printf ' f'
	cond_cmd "$tmp/g.$r" work "" work none;                                     printf ' g'
	cond_cmd "$tmp/h.$r" work "$tmp/h.folded" work lupe "$LUPE" record -F 999 -o "$tmp/h.folded"; printf ' h'
	cond_cmd "$tmp/i.$r" work "$tmp/i.data" work perf perf record -F 999 -g -e cpu-clock -o "$tmp/i.data"; printf ' i'
	cond_true "$r";                                                             printf ' true'
	cond_first "$r";                                                            printf ' first\n'
	rep_time=$((SECONDS - rep_start))
	done_reps=$r
done
[ "$done_reps" -gt 0 ] || die "no repetition fitted in the budget"

# median COLUMN FILES...: the median of a column over the repetitions ("-" stays "-").
median() {
	local col=$1
	shift
	awk -v c="$col" '{ print $c }' "$@" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0 || v[1] == "-") print "-";
		       else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "-") printf "x%.3f", a / b; else print "-" }'; }
mb() { awk -v k="$1" 'BEGIN { if (k == "-") print "-"; else printf "%.1f", k / 1024 }'; }
m() { median "$2" "$tmp"/"$1".*.res; }

describe() {
	case $1 in
	a) echo "hot, unprofiled" ;;
	b) echo "lupe record -F 999 -- hot" ;;
	c) echo "perf record -F 999 -g -e cpu-clock -- hot" ;;
	d) echo "lupe record -F 99 -- hot" ;;
	e) echo "hot + lupe record -F 999 -d 3 (system)" ;;
	f) echo "hot + perf record -a -g -F 999 -- sleep 3" ;;
	g) echo "work, unprofiled" ;;
	h) echo "lupe record -F 999 -- work" ;;
	i) echo "perf record -F 999 -g -e cpu-clock -- work" ;;
	esac
}

echo
echo "Per condition, median of $done_reps. wall, CPU: the command tree (profiler + workload), or"
echo "for e f the workload alone while the profiler runs; x: against a (hot) or g (work)."
echo "self: the tree's CPU / the workload's own CPU in the same run. prof: the profiler's own"
echo "CPU and max RSS. samples: the workload's, in the profile; /exp: per (its CPU s x Hz)."
printf '%-2s %-44s %7s %7s %7s %7s %6s %6s %6s %9s %7s %6s %4s\n' \
	"" condition wall x CPU x self "prof" "RSS" "out" samples /exp lost
printf '%-2s %-44s %7s %7s %7s %7s %6s %6s %6s %9s %7s %6s %4s\n' \
	"" "" s "" s "" "" "CPU s" MB bytes "" "" ""
for c in a b c d e f g h i; do
	case $c in [a-f]) base=a ;; *) base=g ;; esac
	case $c in d) hz=99 ;; *) hz=999 ;; esac
	w=$(m $c 1) cpu=$(m $c 2) pc=$(m $c 3) rss=$(m $c 4) wl=$(m $c 5) sz=$(m $c 6)
	n=$(m $c 7) lost=$(m $c 8)
	self=$(ratio "$cpu" "$wl")
	cov=$(awk -v n="$n" -v t="$wl" -v f="$hz" \
		'BEGIN { if (n == "-" || t <= 0) print "-"; else printf "%.3f", n / (t * f) }')
	case $c in a | g) pc=- rss=- self=- ;; e | f) self=- ;; esac
	[ "$pc" = - ] || pc=$(awk -v v="$pc" 'BEGIN { printf "%.2f", v }')
	printf '%-2s %-44s %7.3f %7s %7.2f %7s %6s %6s %6s %9s %7s %6s %4s\n' "$c" \
		"$(describe "$c")" "$w" "$(ratio "$w" "$(m $base 1)")" "$cpu" \
		"$(ratio "$cpu" "$(m $base 2)")" "$self" "$pc" "$(mb "$rss")" "$sz" "$n" "$cov" "$lost"
done

T_LUPE=$(median 1 "$tmp"/t.*.lupe.wall)
T_PERF=$(median 1 "$tmp"/t.*.perf.wall)
P_SCRIPT=$(median 1 "$tmp"/p.*.res) P_READY=$(median 2 "$tmp"/p.*.res) P_FIRST=$(median 3 "$tmp"/p.*.res)
echo
echo "start-up + flush (profiling \`true\`, wall): lupe $T_LUPE s, perf $T_PERF s"
echo "first sample (lupe run probe, ms after launch): script starts $P_SCRIPT; sampler attached"
echo "  and command started $P_READY (samples are taken from here); first sample in the aggregate $P_FIRST"

echo
echo "| figure (999 Hz) | lupe | target | perf |"
echo "|---|---|---|---|"
echo "| CPU, hot $MS two: profiled command / unprofiled (start-up and flush included) | $(ratio "$(m b 2)" "$(m a 2)") | <= x1.03 | $(ratio "$(m c 2)" "$(m a 2)") |"
echo "| CPU, the same run: command tree / workload alone | $(ratio "$(m b 2)" "$(m b 5)") | <= x1.03 | $(ratio "$(m c 2)" "$(m c 5)") |"
echo "| wall, hot $MS two: profiled / unprofiled (start-up and flush included) | $(ratio "$(m b 1)" "$(m a 1)") | <= x1.05 | $(ratio "$(m c 1)" "$(m a 1)") |"
echo "| CPU, fixed work: profiled / unprofiled | $(ratio "$(m h 2)" "$(m g 2)") | <= x1.03 | $(ratio "$(m i 2)" "$(m g 2)") |"
echo "| wall, fixed work: profiled / unprofiled | $(ratio "$(m h 1)" "$(m g 1)") | <= x1.05 | $(ratio "$(m i 1)" "$(m g 1)") |"
echo "| profiler max RSS, profiling the command | $(mb "$(m b 4)") MB | <= 40 MB | $(mb "$(m c 4)") MB |"
echo "| profiler max RSS, whole system for 3 s | $(mb "$(m e 4)") MB | <= 40 MB | $(mb "$(m f 4)") MB |"
echo "| start-up + flush (profiling \`true\`, wall) | $T_LUPE s | - | $T_PERF s |"
echo "| first sample: sampler attached and command started / first sample in the aggregate | $P_READY / $P_FIRST ms | <= 300 ms | - |"
