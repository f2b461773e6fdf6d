#!/usr/bin/env bash
# Where a fresh-clone CI run spends its time: clones REV (default HEAD) of this repository into a
# temporary directory with an empty target dir and runs the steps of .ci/run one by one, timing
# each (wall, user+sys CPU seconds); then writes `cargo build --timings` of the test build and
# the integration tests' own durations. Usage: bench/ci/fresh.sh [REV] [OUT_DIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
rev="${1:-HEAD}"
out="${2:-$(mktemp -d)}"
mkdir -p "$out"
work="$(mktemp -d)"
git clone -q "$repo" "$work/kfr"
cd "$work/kfr"
git checkout -q "$rev"
step() {
  local name="$1"; shift
  local t0 u0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$out/$name.cpu" "$@" >"$out/$name.log" 2>&1
  t1=$(date +%s.%N)
  read -r u s <"$out/$name.cpu"
  printf '%-14s wall %7.1f s  cpu %7.1f s\n' "$name" "$(echo "$t1 - $t0" | bc)" "$(echo "$u + $s" | bc)" | tee -a "$out/summary.txt"
}
step fmt cargo fmt --check
step clippy cargo clippy --locked --all-targets -- -D warnings
step test-build cargo test --locked --no-run --timings
cp target/cargo-timings/cargo-timing.html "$out/" 2>/dev/null || true
step test-run cargo test --locked
# Slowest tests of the integration binary (libtest's own timings, read without rebuilding).
bin=$(ls -t target/debug/deps/integration-* | grep -v '\.d$' | head -1)
RUSTC_BOOTSTRAP=1 "$bin" -Zunstable-options --report-time 2>/dev/null \
  | sed -nE 's/^test (.*) \.\.\. ok <([0-9.]+)s>/\2 \1/p' | sort -rn | head -15 >"$out/slowest-tests.txt" || true
echo "rev $(git rev-parse --short HEAD); results in $out" | tee -a "$out/summary.txt"
rm -rf "$work"
