#!/bin/bash
# compare.sh: lupe record next to perf record on workloads built WITHOUT frame pointers,
# in the same run. Prints one table and asserts nothing; BENCHMARKS.md records its figures.
#
#   sudo bench/compare.sh                 # build/lupe; LUPE=/path/to/lupe to change
#   REPS=5 HZ=999 sudo bench/compare.sh   # repetitions (default 3), frequency (default 999)
#
# Workloads (bench/workloads/, gcc -O2 -g -fomit-frame-pointer), each a fixed amount of
# work calibrated here to about 2 s of CPU, so a slowdown shows in its time:
#   chain   main -> run -> stage1 -> stage2 (recursion, 9 deep) -> stage3 -> leaf
#   sortcb  main -> sort_once -> qsort (libc) -> ... -> cmp -> weigh
# Conditions, interleaved in every repetition so that load changes hit them alike:
#   none    the workload alone
#   lupe    lupe record -F HZ -o FILE -- W            (folded output, native unwinding)
#   fp      perf record -F HZ -g -e cpu-clock -o FILE -- W
#   dwarf   perf record -F HZ --call-graph dwarf -e cpu-clock -o FILE -- W
# Every workload runs under its own GNU time inside the profiler, so its CPU and wall are
# its own. Columns (medians over the repetitions):
#   cpu_x, wall_x  the workload's CPU (user+sys) and wall time over the unprofiled run's
#   prof_cpu_s     the profiler's CPU while recording: the command tree's CPU (an outer GNU
#                  time) minus the workload's
#   post_cpu_s     CPU to turn the recording into stacks afterwards: none for lupe (it
#                  writes symbolized stacks), `perf script` for perf
#   rss_MB         the profiler's max RSS (outer GNU time %M: the largest process of the
#                  tree, which is the profiler here: the workloads use under 2 MB)
#   out_KB         the output file (lupe's folded text; perf.data)
#   samples        samples of the workload (comm = its name)
#   to_main        the fraction of those whose stack reaches main: every caller the
#                  workload's own code has (the stack is complete as far as the program goes)
#   to_start       the fraction that reaches _start, the root of every stack of a
#                  single-threaded program: complete through libc's start-up code too
set -u
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
LUPE=${LUPE:-$repo/build/lupe}
case $LUPE in /*) ;; *) LUPE=$PWD/$LUPE ;; esac
REPS=${REPS:-3}
HZ=${HZ:-999}
LIMIT=120

die() { echo "compare: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (BPF and perf need it)"
[ -x "$LUPE" ] || die "no lupe at $LUPE (build it, or set LUPE=)"
[ -x /usr/bin/perf ] || die "needs perf (Debian linux-perf; tools/build.sh installs it)"
[ -x /usr/bin/time ] || die "needs GNU time (Debian time)"
command -v gcc >/dev/null || die "needs gcc to build the workloads"

tmp=$(mktemp -d /tmp/compare.XXXXXX) || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || die "cannot enter $tmp"

for w in chain sortcb; do
	gcc -O2 -g -fomit-frame-pointer -o "$w" "$here/workloads/$w.c" || die "cannot build $w"
done

# Rounds for about 2 s of CPU, from a short run's user time.
calibrate() {
	/usr/bin/time -f '%U %S' -o cal.time "./$1" "$2" || die "$1 failed"
	awk -v r="$2" '{ c = $1 + $2; if (c < 0.02) c = 0.02; printf "%d\n", r * 2 / c }' cal.time
}
declare -A ROUNDS=([chain]=$(calibrate chain 50000) [sortcb]=$(calibrate sortcb 5))

# run W COND REP: leaves COND-W-REP.{in,out}.time (GNU time: wall user sys maxrss_KB),
# the output file COND-W-REP.data and its stacks COND-W-REP.stacks (perf script).
run() {
	local w=$1 c=$2 r=$3 p="$2-$1-$3"
	local inner=(/usr/bin/time -f '%e %U %S %M' -o "$p.in.time" "./$w" "${ROUNDS[$w]}")
	local outer=(/usr/bin/time -f '%e %U %S %M' -o "$p.out.time")
	case $c in
	none) timeout $LIMIT "${inner[@]}" ;;
	lupe) timeout $LIMIT "${outer[@]}" "$LUPE" record -F "$HZ" -o "$p.data" -- "${inner[@]}" \
		2>"$p.err" ;;
	fp) timeout $LIMIT "${outer[@]}" perf record -q -F "$HZ" -g -e cpu-clock -o "$p.data" \
		-- "${inner[@]}" 2>"$p.err" ;;
	dwarf) timeout $LIMIT "${outer[@]}" perf record -q -F "$HZ" --call-graph dwarf -e cpu-clock \
		-o "$p.data" -- "${inner[@]}" 2>"$p.err" ;;
	esac >/dev/null || echo "compare: $c $w run $r failed: $(tail -n 3 "$p.err" 2>/dev/null)" >&2
	if [ "$c" = fp ] || [ "$c" = dwarf ]; then
		/usr/bin/time -f '%e %U %S %M' -o "$p.post.time" \
			perf script -i "$p.data" -F comm,ip,sym 2>/dev/null >"$p.stacks"
	fi
}

# stack_stats W COND REP: "samples to_main to_start" for the workload's comm.
stack_stats() {
	local w=$1 c=$2 r=$3 p="$2-$1-$3"
	case $c in
	lupe)
		# Folded: comm;root;...;leaf COUNT; kernel frames (suffix _[k]) sit on the leaf side.
		awk -v w="$w" '{ n = $NF; k = split($1, f, ";") }
			f[1] == w { s += n; if (f[2] == "_start") ok += n
				for (i = 2; i <= k; i++) if (f[i] == "main") { m += n; break } }
			END { printf "%d %d %d\n", s, m, ok }' "$p.data" ;;
	fp|dwarf)
		# perf script -F comm,ip,sym: a line "comm", then "ADDR SYM" per frame, leaf first, root
		# last, then a blank line.
		awk -v w="$w" 'function flush() {
				if (hdr == w) { s++; if (root == "_start") ok++; if (main) m++ }
				hdr = ""; main = 0 }
			/^[^ \t]/ { flush(); hdr = $1; root = ""; next }
			/^[ \t]+/ { root = $2; if ($2 == "main") main = 1; next }
			/^$/ { flush() }
			END { flush(); printf "%d %d %d\n", s, m, ok }' "$p.stacks" ;;
	esac
}

echo "compare: $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $HZ Hz; $REPS reps;" \
	"rounds: chain ${ROUNDS[chain]}, sortcb ${ROUNDS[sortcb]}" >&2
for r in $(seq "$REPS"); do
	for w in chain sortcb; do
		for c in none lupe fp dwarf; do
			run "$w" "$c" "$r"
		done
	done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf '%-7s %-6s %6s %6s %10s %10s %7s %9s %8s %7s %8s\n' workload prof cpu_x wall_x prof_cpu_s \
	post_cpu_s rss_MB out_KB samples to_main to_start
for w in chain sortcb; do
	base_cpu=$(for r in $(seq "$REPS"); do awk '{ print $2 + $3 }' "none-$w-$r.in.time"; done | median)
	base_wall=$(for r in $(seq "$REPS"); do awk '{ print $1 }' "none-$w-$r.in.time"; done | median)
	printf '%-7s %-6s %6s %6s %10s %10s %7s %9s %8s %7s %8s\n' "$w" none 1.00 1.00 - - - - - - -
	for c in lupe fp dwarf; do
		cpu_x=$(for r in $(seq "$REPS"); do awk -v b="$base_cpu" '{ printf "%.4f\n", ($2 + $3) / b }' "$c-$w-$r.in.time"; done | median)
		wall_x=$(for r in $(seq "$REPS"); do awk -v b="$base_wall" '{ printf "%.4f\n", $1 / b }' "$c-$w-$r.in.time"; done | median)
		prof=$(for r in $(seq "$REPS"); do
			paste "$c-$w-$r.out.time" "$c-$w-$r.in.time" | awk '{ printf "%.3f\n", ($2 + $3) - ($6 + $7) }'
		done | median)
		post=-
		if [ "$c" != lupe ]; then
			post=$(for r in $(seq "$REPS"); do awk '{ printf "%.3f\n", $2 + $3 }' "$c-$w-$r.post.time"; done | median)
		fi
		rss=$(for r in $(seq "$REPS"); do awk '{ printf "%.1f\n", $4 / 1024 }' "$c-$w-$r.out.time"; done | median)
		size=$(for r in $(seq "$REPS"); do echo $(( $(stat -c %s "$c-$w-$r.data") / 1024 )); done | median)
		samples=$(for r in $(seq "$REPS"); do stack_stats "$w" "$c" "$r" | cut -d' ' -f1; done | median)
		to_main=$(for r in $(seq "$REPS"); do stack_stats "$w" "$c" "$r" |
			awk '{ printf "%.3f\n", $1 ? $2 / $1 : 0 }'; done | median)
		to_start=$(for r in $(seq "$REPS"); do stack_stats "$w" "$c" "$r" |
			awk '{ printf "%.3f\n", $1 ? $3 / $1 : 0 }'; done | median)
		printf '%-7s %-6s %6.3f %6.3f %10s %10s %7s %9s %8s %7s %8s\n' "$w" "$c" "$cpu_x" "$wall_x" \
			"$prof" "$post" "$rss" "$size" "$samples" "$to_main" "$to_start"
	done
done
