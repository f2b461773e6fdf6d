#!/usr/bin/env bash
# Peak RSS of the agent taking one large spool file (issue 19: a spool file was read whole into
# memory). The agent runs with --rate 1 (it takes the file; delivery hardly starts), a CSV of N
# `add,ID` lines is renamed into its spool directory, and VmHWM / VmRSS are read from
# /proc/PID/status once the file is in done/.
#
# Usage: bench/sync/spool_rss.sh [N=1000000]   (KFR_BIN=path measures another build)
set -euo pipefail
N=${1:-1000000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/kfr-spool-rss.XXXXXX)
. "$HERE/common.sh"

mkdir -p "$WORK/spool"
printf '\n[[sync.sources]]\nkind = "spool"\ndir = "%s"\nname = "core"\n' "$WORK/spool" >>"$WORK/d/kfr.toml"
python3 - "$N" "$HERE" >"$WORK/spool/.big.csv" <<'EOF'
import itertools, sys
sys.path.insert(0, sys.argv[2])
import drive
out = sys.stdout
for cid in itertools.islice(drive.customers(), int(sys.argv[1])):
    out.write(f"add,{cid}\n")
EOF
echo "== file: $N lines, $(du -m "$WORK/spool/.big.csv" | cut -f1) MB"
OPS_PORT=$(free_port)
"$KFR" --config "$WORK/d/kfr.toml" sync --state "$STATE" --metrics-listen "127.0.0.1:$OPS_PORT" --rate 1 \
  >>"$WORK/agent.out" 2>>"$WORK/agent.err" &
AGENT_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$OPS_PORT/readyz" >/dev/null && break; sleep 0.1; done
echo "agent ready: VmHWM $(vm VmHWM) MB"
t0=$(date +%s.%N)
mv "$WORK/spool/.big.csv" "$WORK/spool/big.csv"
while [ ! -e "$WORK/spool/done/big.csv" ]; do
  kill -0 "$AGENT_PID" 2>/dev/null || { echo "the agent stopped:"; cat "$WORK/agent.err"; exit 1; }
  sleep 0.2
done
t1=$(date +%s.%N)
echo "taken in $(echo "$t1 - $t0" | bc) s: VmHWM $(vm VmHWM) MB, VmRSS $(vm VmRSS) MB; unfinished $(outbox_unfinished)"
stop_agent
