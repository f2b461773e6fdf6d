#!/usr/bin/env bash
# Sync benchmark 2: the achieved rate with `--rate 250` and a backlog. Target: >= 97 % of 250/s
# over 60 s, and never above 250 in a second.
#
# Posts N single adds (default 20,000: 80 s of work at 250/s) to an agent running with
# --rate RATE, then counts deliveries per second from the store's finished_at over SECONDS
# (default 60) starting 2 s after the first delivery (the backlog is still there at the end).
#
# Usage: bench/sync/rate.sh [RATE] [SECONDS] [N]   (defaults 250 60 20000)
set -euo pipefail
RATE=${1:-250}
SECS=${2:-60}
N=${3:-20000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/kfr-sync-rate.XXXXXX)
. "$HERE/common.sh"

start_agent "$RATE" 32
echo "== agent --rate $RATE --max-in-flight 32; posting $N events"
python3 "$DRIVE" preload "$N" "$URL" "$WORK/key" 5000 | grep intake
first=$(sqlite3 "file:$STATE?mode=ro" "SELECT MIN(finished_at) FROM outbox")
from=$(python3 -c "from datetime import datetime; print(datetime.fromisoformat('$first'.replace('Z','+00:00')).timestamp() + 2)")
sleep $((SECS + 4))
echo "== unfinished at the end of the window: $(outbox_unfinished)"
python3 "$DRIVE" rate "$STATE" "$from" "$SECS" | tee "$WORK/rate.out"
stop_agent
python3 - "$RATE" "$WORK/rate.out" <<'PY'
import re, sys
rate = float(sys.argv[1]); text = open(sys.argv[2]).read()
got = float(re.search(r"delivered, ([\d.]+)/s", text).group(1))
peak = int(re.search(r"max (\d+);", text).group(1))
ok = got >= 0.97 * rate and peak <= rate
print(f"achieved {got:.2f}/s = {100 * got / rate:.2f} % of {rate:.0f}/s; busiest calendar second {peak}; "
      f"target >= 97 % and never above: {'met' if ok else 'MISSED'}")
PY
