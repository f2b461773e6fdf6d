#!/usr/bin/env bash
# Benchmark (b): end-to-end `kfr load` of N relationships (default 1,100,000) against
# `kfr mock --ingest-rate RATE` (default 50,000/s): wall time from process start to exit, and its
# ratio to the ingestion limit N / RATE (22 s for the defaults). Target: <= 1.05 x limit + 2 s.
#
# Builds kfr in release mode, makes throwaway certificates, starts the mock on a free port, runs
# the load with a fresh state store and a report, checks the mock holds every relationship and
# accepted exactly one upload per batch, and stops the mock. Everything lives under /tmp.
#
# Usage: bench/load/e2e.sh [N] [RATE]   (KEEP=path reuses/keeps a generated file at that path)
set -euo pipefail

N=${1:-1100000}
RATE=${2:-50000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/kfr-load-e2e.XXXXXX)
MOCK_PID=
cleanup() { [ -n "$MOCK_PID" ] && kill "$MOCK_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

. "$HERE/common.sh"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$KFR" certs local --org-number 916960190 --out "$WORK/d" --mock-url "http://127.0.0.1:$PORT" >/dev/null
"$KFR" mock --listen "127.0.0.1:$PORT" --trust "$WORK/d/ca.pem" --ingest-rate "$RATE" 2>"$WORK/mock.log" &
MOCK_PID=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

mkdir "$WORK/cwd"
start=$(date +%s.%N)
(cd "$WORK/cwd" && env -u KFR_CONFIG "$KFR" --config "$WORK/d/kfr.toml" load "$FILE" --ingest-rate "$RATE" \
    --state "$WORK/kfr-state.db" --report "$WORK/report.json" >"$WORK/load.out" 2>"$WORK/load.err")
end=$(date +%s.%N)
wall=$(echo "$end - $start" | bc -l)
limit=$(echo "$N / $RATE" | bc -l)
target=$(echo "1.05 * $limit + 2" | bc -l)
tail -1 "$WORK/load.out"
curl -fs "http://127.0.0.1:$PORT/_mock/state" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("mock: batches_accepted=%d ingested_total=%d ingest_queue=%d relationships_active=%d" % (
    d["batches_accepted"], d["ingested_total"], d["ingest_queue"], d["relationships_active"]))'
printf 'wall %.2f s; limit %.1f s; ratio %.3f; target <= %.2f s: %s\n' "$wall" "$limit" \
  "$(echo "$wall / $limit" | bc -l)" "$target" "$(echo "$wall <= $target" | bc -l | sed 's/1/met/;s/0/MISSED/')"
