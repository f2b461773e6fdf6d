#!/usr/bin/env bash
# Benchmark: `kfr validate --file` against python-stdnum on the same generated file.
#
# Creates a throwaway venv under /tmp with python-stdnum, builds kfr in release mode, generates
# N identifiers (default 10,000,000; mixed kinds valid under the test policy, 1 % invalid), and
# times both validators end to end (process start to exit, file reading included) in the same
# run. Prints both rates and the ratio. Nothing is written outside /tmp and target/.
#
# Usage: bench/ids/run.sh [N]
set -euo pipefail

N=${1:-10000000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/kfr-ids-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "== machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/Model name: *//')"

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet python-stdnum
echo "== python-stdnum $("$WORK/venv/bin/python" -c 'import stdnum; print(stdnum.__version__)'), $(python3 --version)"

(cd "$ROOT" && cargo build --release --quiet)
KFR="$ROOT/target/release/kfr"

echo "== generating $N identifiers"
python3 "$HERE/gen.py" "$N" "$WORK/ids.txt"

now() { date +%s.%N; }

# kfr exits 1 because the file holds invalid lines on purpose; the rejection report goes to a file.
# It runs from an empty directory with KFR_* variables removed so no local configuration applies.
mkdir "$WORK/cwd"
start=$(now)
(cd "$WORK/cwd" && env -u KFR_CONFIG "$KFR" --env test validate --file "$WORK/ids.txt" >"$WORK/kfr.out") || true
kfr_s=$(echo "$(now) - $start" | bc -l)
kfr_summary=$(grep -E '^[0-9]+ identifiers?:' "$WORK/kfr.out")

start=$(now)
stdnum_summary=$("$WORK/venv/bin/python" "$HERE/stdnum_validate.py" "$WORK/ids.txt")
stdnum_s=$(echo "$(now) - $start" | bc -l)

printf '== kfr validate:  %8.3f s  %12.0f ids/s  (%s)\n' "$kfr_s" "$(echo "$N / $kfr_s" | bc -l)" "$kfr_summary"
printf '== python-stdnum: %8.3f s  %12.0f ids/s  (%s)\n' "$stdnum_s" "$(echo "$N / $stdnum_s" | bc -l)" "$stdnum_summary"
printf '== ratio: %.1fx\n' "$(echo "$stdnum_s / $kfr_s" | bc -l)"
