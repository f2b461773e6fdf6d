# Shared by the sync agent benchmarks (sourced). Prints the machine, builds kfr in release mode,
# makes throwaway certificates and a bearer key under $WORK, starts `kfr mock` (no faults, no
# limit on single calls) on a free port, and defines start_agent / stop_agent / wait_empty.
# KFR_BENCH_STORE=postgres puts the store in a throwaway PostgreSQL cluster (bench/sync/pg.sh).
# Expects HERE, ROOT and WORK; kfr's state home goes under $WORK (nothing in the user's home).
echo "== machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/Model name: *//'), $(uname -sr), $(rustc --version), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# The scripts' own settings, KFR_BIN and KFR_BENCH_STORE, are read here and then removed from
# the environment: every kfr started below (certs, mock, agents, outbox status) would inherit
# them and warn about KFR_* variables it does not know.
BENCH_BIN=${KFR_BIN:-}
BENCH_STORE=${KFR_BENCH_STORE:-sqlite}
unset KFR_BIN KFR_BENCH_STORE
# KFR_BIN=path measures another build (e.g. a copy of an earlier one) instead of building.
if [ -n "$BENCH_BIN" ]; then KFR=$BENCH_BIN; else
  (cd "$ROOT" && cargo build --release --quiet)
  KFR="$ROOT/target/release/kfr"
fi
echo "== kfr: $("$KFR" --version)"
DRIVE="$HERE/drive.py"
export KFR_STATE_HOME="$WORK/state"
unset KFR_CONFIG KFR_LOG

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

MOCK_PORT=$(free_port)
"$KFR" certs local --org-number 916960190 --out "$WORK/d" --mock-url "http://127.0.0.1:$MOCK_PORT" >/dev/null
"$KFR" mock --listen "127.0.0.1:$MOCK_PORT" --trust "$WORK/d/ca.pem" 2>"$WORK/mock.log" &
MOCK_PID=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$MOCK_PORT/healthz" >/dev/null && break; sleep 0.1; done
(umask 077 && head -c 24 /dev/urandom | base64 > "$WORK/key")
STATE="$WORK/s/kfr-state.db"
mkdir -p "$WORK/s"
STATE_ARGS=(--state "$STATE")
# KFR_BENCH_STORE=postgres: the same benchmark on a PostgreSQL store (bench/sync/pg.sh).
if [ "$BENCH_STORE" = postgres ]; then . "$HERE/pg.sh"; else echo "== store: SQLite $STATE"; fi
AGENT_PID=

# start_agent RATE MAX_IN_FLIGHT: the agent on free ports, waits until /readyz answers 200.
start_agent() {
  INGEST_PORT=$(free_port)
  OPS_PORT=$(free_port)
  URL="http://127.0.0.1:$INGEST_PORT/events"
  "$KFR" --config "$WORK/d/kfr.toml" sync "${STATE_ARGS[@]}" --listen "127.0.0.1:$INGEST_PORT" \
    --ingest-key-file "$WORK/key" --metrics-listen "127.0.0.1:$OPS_PORT" --rate "$1" --max-in-flight "$2" \
    >>"$WORK/agent.out" 2>>"$WORK/agent.err" &
  AGENT_PID=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$OPS_PORT/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "the agent did not become ready:"; cat "$WORK/agent.err"; exit 1
}

# stop_agent: SIGTERM, wait for the drain; prints the exit code.
stop_agent() {
  kill -TERM "$AGENT_PID"
  local rc=0
  wait "$AGENT_PID" || rc=$?
  echo "agent stopped, exit code $rc"
  AGENT_PID=
}

# outbox_unfinished: pending + in flight + accepted, from `kfr outbox status --json`.
outbox_unfinished() {
  "$KFR" --config "$WORK/d/kfr.toml" outbox status "${STATE_ARGS[@]}" --json |
    python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; print(s["pending"]+s["in_flight"]+s["accepted"])'
}

# wait_empty [POLL_SECONDS]: polls `kfr outbox status --json` until nothing is unfinished.
wait_empty() {
  while [ "$(outbox_unfinished)" != 0 ]; do sleep "${1:-0.5}"; done
}

# cpu_of PID: user + system CPU seconds the process used so far.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }

# vm KEY: VmHWM or VmRSS of the agent in MB.
vm() { awk -v k="$1:" '$1==k {printf "%.1f", $2/1024}' "/proc/$AGENT_PID/status"; }

cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null
  [ -n "$MOCK_PID" ] && kill "$MOCK_PID" 2>/dev/null
  wait 2>/dev/null
  if declare -F pg_stop >/dev/null; then pg_stop; fi
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
