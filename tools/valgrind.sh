#!/usr/bin/env bash
# Runs each C unit test under valgrind memcheck; any memory error or definite/indirect leak
# fails it. Tests that need root or BPF still run (and SKIP what they cannot do).
#   tools/valgrind.sh [BUILD_DIR] [TEST_NAME_REGEX]     (default: build, all c_test_*)
# Use a build without sanitizers (ASan and valgrind do not mix). Prints one line per test
# and each failing test's valgrind report; exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
pattern=${2:-.}
if ! command -v valgrind >/dev/null; then
  echo "valgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2
  exit 77
fi
if grep -q 'LUPE_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  echo "valgrind.sh: $build is a sanitizer build; use a plain one" >&2
  exit 2
fi
build=$(cd "$build" && pwd)
export LUPE_FIXTURES=$PWD/tests/fixtures LUPE_BUILD=$build
logs=$(mktemp -d)
failed=0 ran=0
for t in "$build"/tests/c_test_*; do
  name=$(basename "$t")
  [[ -x $t && $name =~ $pattern ]] || continue
  ran=$((ran + 1))
  start=$SECONDS
  # --errors-for-leak-kinds: "possibly" and "reachable" blocks are process-lifetime caches
  # (libelf, OpenSSL, libbpf's one-time probes); definite and indirect leaks are bugs.
  # --max-stackframe: some tests keep 2 MiB of expected values on the stack; above the
  # default (2000000 bytes) valgrind takes the frame for a stack switch and reports every
  # access in it as invalid.
  valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --max-stackframe=16777216 \
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
    --track-origins=yes --num-callers=30 --log-file="$logs/$name.vg" \
    "$t" >"$logs/$name.out" 2>&1
  rc=$?
  errs=$(grep -m1 -o 'ERROR SUMMARY: [0-9]*' "$logs/$name.vg" | sed 's/.*: //')
  case $rc in
    0|77) printf '%-24s ok (%s errors, %ds%s)\n' "$name" "${errs:-?}" $((SECONDS - start)) \
      "$([ $rc = 77 ] && echo ', skipped')" ;;
    99) failed=$((failed + 1)); printf '%-24s MEMCHECK ERRORS (%s)\n' "$name" "$errs"
      grep -E '^(FAIL|    )' "$logs/$name.out" | head -20
      grep -v '^==[0-9]*== *$' "$logs/$name.vg" | sed -n '/ERROR SUMMARY\|Invalid\|uninitialised\|definitely\|indirectly\|Syscall param/,+25p' | head -120 ;;
    *) failed=$((failed + 1)); printf '%-24s FAILED (exit %d)\n' "$name" $rc
      tail -n 30 "$logs/$name.out" ;;
  esac
done
rm -rf "$logs"
echo "valgrind.sh: $ran tests, $failed failed"
[ $ran -gt 0 ] && [ $failed = 0 ]
