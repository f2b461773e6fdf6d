#!/usr/bin/env bash
# Sync benchmark 3: latency from the 202 to delivered at a steady offered load. Target: p99 <= 50 ms
# at 100 events/s.
#
# Offers OFFER events a second (default 100), one per POST, for SECONDS (default 30) to an agent
# with --rate RATE (default 1000, well above the offered load so the limiter only spaces requests)
# and --max-in-flight 32. Each event's 202 time is recorded by the client; its finished_at (set
# when KFR's answer arrived, just before the settlement's commit) is read from the store afterwards.
#
# Usage: bench/sync/latency.sh [OFFER] [SECONDS] [RATE]
set -euo pipefail
OFFER=${1:-100}
SECS=${2:-30}
RATE=${3:-1000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/kfr-sync-lat.XXXXXX)
. "$HERE/common.sh"

start_agent "$RATE" 32
echo "== agent --rate $RATE --max-in-flight 32; offering $OFFER/s for $SECS s"
python3 "$DRIVE" steady "$OFFER" "$SECS" "$URL" "$WORK/key" "$WORK/times"
wait_empty 0.2
python3 "$DRIVE" latency "$STATE" "$WORK/times" | tee "$WORK/lat.out"
stop_agent
p99=$(awk '/^202 -> delivered/ {for (i=1;i<=NF;i++) if ($i=="p99") print $(i+1)}' "$WORK/lat.out")
echo "p99 from 202 to delivered $p99 ms; target <= 50 ms: $(python3 -c "print('met' if $p99 <= 50 else 'MISSED')")"
