# Sourced by common.sh when KFR_BENCH_STORE=postgres: a throwaway PostgreSQL cluster under $WORK
# on a free port, run as the `postgres` user when we are root (PostgreSQL refuses root), with
# the server's durable defaults (fsync on, synchronous_commit on: the same durability the SQLite
# figures have), a role and database for kfr, and the store in kfr.toml. Defines pg_stop and
# pg_span (the drive.py `span` figures from the database).
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL server binaries missing: apt-get install postgresql"; exit 1; }
PGDIR="$WORK/pg"
mkdir -p "$PGDIR"
PGPORT=$(free_port)
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$PGDIR"; chmod 755 "$WORK"; AS=(runuser -u postgres --); fi
"${AS[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
cat >>"$PGDIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGDIR'
max_connections = 100
CONF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w start >/dev/null
PSQL=(psql -h "$PGDIR" -p "$PGPORT" -U postgres -qAt)
"${PSQL[@]}" -c "CREATE ROLE kfr LOGIN PASSWORD 'bench-only'" -c "CREATE DATABASE kfr OWNER kfr" >/dev/null
(umask 077 && echo bench-only >"$WORK/db.password")
printf '\n[store]\nurl = "postgres://kfr@127.0.0.1:%s/kfr"\npassword_file = "%s"\n' "$PGPORT" "$WORK/db.password" >>"$WORK/d/kfr.toml"
echo "== store: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT (fsync on, synchronous_commit on)"
# The store is in kfr.toml: no --state.
STATE_ARGS=()

pg_stop() { "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true; }

# pg_span: first_received, last_finished and the states, as drive.py's `span` prints them.
pg_span() {
  "${PSQL[@]}" -d kfr -c "SELECT 'first_received ' || extract(epoch FROM min(received_at)) FROM outbox" \
    -c "SELECT 'last_finished ' || coalesce(extract(epoch FROM max(finished_at)), 0) FROM outbox" \
    -c "SELECT 'states ' || string_agg(state || '=' || n, ' ' ORDER BY state) FROM (SELECT state, count(*) n FROM outbox GROUP BY state) s"
}
