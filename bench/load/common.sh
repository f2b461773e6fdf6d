# Shared by the load benchmarks (sourced): prints the machine, builds kfr in release mode into
# $KFR, and makes sure $FILE holds N generated relationships (KEEP=path reuses/keeps a file).
# Expects N, HERE, ROOT and WORK. kfr's state home goes under $WORK, so nothing is written to the
# user's home (pseudonym key, list of running loads).
echo "== machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/Model name: *//'), $(uname -sr), $(rustc --version)"
(cd "$ROOT" && cargo build --release --quiet)
KFR="$ROOT/target/release/kfr"
export KFR_STATE_HOME="$WORK/state"

FILE=${KEEP:-$WORK/customers.csv}
if [ ! -s "$FILE" ]; then
  echo "== generating $N lines into $FILE"
  python3 "$HERE/gen.py" "$N" "$FILE"
fi
