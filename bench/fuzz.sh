#!/usr/bin/env bash
# Runs each fuzz target in fuzz/ (cargo fuzz, libFuzzer) for SECONDS seconds and prints, per
# target, the executions, the coverage reached and whether it stayed clean; a crash's input is
# kept in fuzz/artifacts/TARGET/ (turn it into a regression test in src/fuzzing.rs).
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Usage: bench/fuzz.sh [SECONDS=60] [TARGET…]
#
# Sanitizer: none by default (the targets are safe Rust; without ASan they run several times
# faster, so more inputs per minute). SANITIZER=address for ASan. Debug assertions are on (-a).
# One job per target, one target after the other: the machine has two cores and the targets'
# libFuzzer runs are single-threaded. Corpora grow in fuzz/corpus/TARGET/ (not committed).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(events_body spool_file load_input batch_body)
fi
sanitizer="${SANITIZER:-none}"
cd "$repo"
build_log="$(mktemp)"
if ! cargo +nightly fuzz build -s "$sanitizer" -a >"$build_log" 2>&1; then
  cat "$build_log" >&2
  echo "error: the fuzz targets did not build (nightly toolchain and cargo-fuzz needed)" >&2
  exit 2
fi
out="$(mktemp -d)"
status=0
printf '%-12s %8s %12s %10s %8s %s\n' target seconds execs execs/s cov result
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="$out/$t.log"
  if cargo +nightly fuzz run -s "$sanitizer" -a "$t" -- -max_total_time="$secs" -max_len=4096 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=clean
  else
    result="CRASH (see $log and fuzz/artifacts/$t/)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  printf '%-12s %8s %12s %10s %8s %s\n' "$t" "$secs" "$execs" "$rate" "$cov" "$result"
done
exit "$status"
