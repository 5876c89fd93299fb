#!/usr/bin/env bash
# Installs the Debian packages lupe needs (only those missing), then configures and builds
# into build/. Idempotent: a second run installs nothing and rebuilds only what changed.
#   tools/build.sh            deps + build (Release with debug info)
#   LUPE_SANITIZE=1 tools/build.sh   the same with ASan+UBSan, into build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config    # the C toolchain
  clang llvm                          # clang -target bpf, llvm-strip
  libclang-rt-dev                     # libFuzzer + sanitizer runtimes (tests/fuzz)
  libbpf-dev bpftool                  # BPF loading, skeletons, vmlinux.h
  libelf-dev zlib1g-dev               # libelf (ELF parsing; libbpf needs it too)
  libssl-dev                          # libcrypto's SHA-256 for file IDs
  libiberty-dev                       # C++ and Rust demangling (as c++filt)
  libluajit-5.1-dev luajit            # the embedded Lua, and the interpreter for busted
  libedit-dev                         # line editing and history for `lupe repl` (BSD licence)
  lua-lpeg lua-busted lua-check       # filters; test runner; linter
  binutils                            # readelf/objdump, used by tests as independent oracles
  procps util-linux                   # ps, unshare: integration tests
  golang-go chromium                  # outside readers in tests: go tool pprof, headless Chromium
  libxml2-utils python3               # xmllint (SVG well-formed), a second JSON parser
  valgrind                            # tools/valgrind.sh: memcheck over the C unit tests
  linux-perf                          # bench/compare: perf record -g / --call-graph dwarf
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "tools/build.sh: installing ${missing[*]}" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "tools/build.sh: run as root to install packages (or install them yourself)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

dir=build
args=()
if [ "${LUPE_SANITIZE:-0}" = 1 ]; then
  dir=build-asan
  args+=(-DLUPE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
fi
cmake -S . -B "$dir" "${args[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
