#!/usr/bin/env bash
# Benchmark (a): read + validate + dedupe + plan of N lines with `kfr load FILE --dry-run`.
#
# Builds kfr in release mode, generates N unique synthetic relationships (`ID;YYYY-MM-DD`, default
# 10,000,000) with bench/load/gen.py, then runs the dry run RUNS times (default 5) under
# /usr/bin/time -v and prints wall time, lines/s and peak RSS of each run. Targets: >= 5 M lines/s,
# <= 200 MB peak RSS. Nothing is written outside a temporary directory under /tmp and target/.
#
# Usage: bench/load/plan.sh [N] [RUNS]   (KEEP=path reuses/keeps a generated file at that path)
set -euo pipefail

N=${1:-10000000}
RUNS=${2:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/kfr-load-plan.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

. "$HERE/common.sh"
echo "== $(wc -l < "$FILE") lines, $(du -m "$FILE" | cut -f1) MB"

# Runs from an empty directory with no kfr.toml; env local only needs an org number for the plan.
mkdir "$WORK/cwd"
for i in $(seq "$RUNS"); do
  (cd "$WORK/cwd" && env -u KFR_CONFIG /usr/bin/time -v "$KFR" --env local --org-number 916960190 \
      load "$FILE" --dry-run >"$WORK/plan.out" 2>"$WORK/time.err")
  wall=$(grep 'Elapsed (wall clock)' "$WORK/time.err" | awk '{print $NF}')
  user=$(grep 'User time' "$WORK/time.err" | awk '{print $NF}')
  rss=$(grep 'Maximum resident' "$WORK/time.err" | awk '{print $NF}')
  secs=$(echo "$wall" | awk -F: '{ if (NF==2) print $1*60+$2; else print $1*3600+$2*60+$3 }')
  lines=$(grep -E '^  lines:' "$WORK/plan.out" | sed 's/[^0-9]*\([0-9,]*\).*/\1/' | tr -d ,)
  rate=$(echo "$lines / $secs / 1000000" | bc -l)
  printf 'run %d: %s s wall, %s s user, %.2f M lines/s, peak RSS %.1f MB\n' "$i" "$secs" "$user" "$rate" "$(echo "$rss / 1024" | bc -l)"
done
head -14 "$WORK/plan.out"
