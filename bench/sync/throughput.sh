#!/usr/bin/env bash
# Sync benchmark 1: delivered events a second end to end, mock without limits or faults, durable
# commits (the store's WAL with synchronous=FULL). Target: >= 3,000/s on 2 cores.
#
# Starts the agent with a high rate and in-flight cap, POSTs N single adds (default 50,000) to
# /events as NDJSON in chunks of 5,000 while it delivers, polls `kfr outbox status --json` until
# nothing is unfinished, and reports N / (last finished_at - first 202). Everything under /tmp.
#
# Usage: bench/sync/throughput.sh [N] [RATE] [MAX_IN_FLIGHT]   (defaults 50000 100000 32)
#        KFR_BIN=path uses that binary instead of building; KEEP_WORK=1 keeps the work directory;
#        KFR_BENCH_STORE=postgres measures a PostgreSQL store (a throwaway cluster, fsync on).
set -euo pipefail
N=${1:-50000}
RATE=${2:-100000}
MIF=${3:-32}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/kfr-sync-tput.XXXXXX)
. "$HERE/common.sh"

start_agent "$RATE" "$MIF"
echo "== agent --rate $RATE --max-in-flight $MIF; posting $N events"
python3 "$DRIVE" preload "$N" "$URL" "$WORK/key" 5000 >"$WORK/preload.out"
grep intake "$WORK/preload.out"
first=$(awk '/first_202/ {print $2}' "$WORK/preload.out")
wait_empty 0.5
echo "CPU used: agent $(cpu_of "$AGENT_PID") s, mock $(cpu_of "$MOCK_PID") s (both processes' totals so far); load average $(cut -d' ' -f1-3 /proc/loadavg)"
if declare -F pg_span >/dev/null; then pg_span >"$WORK/span.out"; else python3 "$DRIVE" span "$STATE" >"$WORK/span.out"; fi
last=$(awk '/last_finished/ {print $2}' "$WORK/span.out")
grep states "$WORK/span.out"
stop_agent
python3 - "$N" "$first" "$last" <<'PY'
import sys
n, first, last = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
rate = n / (last - first)
print(f"delivered {n} in {last - first:.2f} s from the first 202 to the last delivery: {rate:,.0f} events/s; "
      f"target >= 3,000/s: {'met' if rate >= 3000 else 'MISSED'}")
PY
