#!/usr/bin/env bash
# Sync benchmark 4: peak RSS of the agent with a large backlog. Target: <= 150 MB.
#
# Phase 1: the agent runs with --rate 1 (so the backlog stays) while N events (default
# 1,000,000) are POSTed in chunks of 5,000; its VmHWM (peak RSS) and VmRSS are read from
# /proc/PID/status after the intake. Phase 2: the agent is stopped (SIGTERM) and restarted with
# --rate 100000 --max-in-flight 32 on the same store, delivers for DELIVER seconds (default 60)
# against the whole backlog, and its VmHWM is read again, with the number delivered meanwhile.
#
# Usage: bench/sync/rss.sh [N] [DELIVER]
set -euo pipefail
N=${1:-1000000}
DELIVER=${2:-60}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/kfr-sync-rss.XXXXXX)
. "$HERE/common.sh"

start_agent 1 32
echo "== phase 1: agent --rate 1; posting $N events; VmHWM at start $(vm VmHWM) MB"
python3 "$DRIVE" preload "$N" "$URL" "$WORK/key" 5000 | grep intake
hwm1=$(vm VmHWM); rss1=$(vm VmRSS)
echo "after intake: unfinished $(outbox_unfinished); VmHWM $hwm1 MB, VmRSS $rss1 MB; store $(du -m "$STATE" | cut -f1) MB"
stop_agent

start_agent 100000 32
echo "== phase 2: agent --rate 100000 --max-in-flight 32 on the backlog for $DELIVER s; VmHWM at start $(vm VmHWM) MB"
before=$(sqlite3 "file:$STATE?mode=ro" "SELECT COUNT(*) FROM outbox WHERE state = 'delivered'")
peak=0
for i in $(seq "$DELIVER"); do
  sleep 1
  h=$(vm VmHWM); peak=$h
  [ $((i % 15)) = 0 ] && echo "  ${i} s: VmHWM $h MB, VmRSS $(vm VmRSS) MB"
done
after=$(sqlite3 "file:$STATE?mode=ro" "SELECT COUNT(*) FROM outbox WHERE state = 'delivered'")
echo "delivered $((after - before)) in $DELIVER s; unfinished $(outbox_unfinished); VmHWM $peak MB"
stop_agent
python3 -c "
m = max($hwm1, $peak)
print(f'peak RSS {m:.1f} MB (intake {$hwm1:.1f} MB, delivering {$peak:.1f} MB); target <= 150 MB: ' + ('met' if m <= 150 else 'MISSED'))"
