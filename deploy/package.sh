#!/bin/sh
# Builds what a release ships, into DIR (default: dist/):
#   kfr           stripped binary (symbol table kept), the one to install
#   kfr.debug     its debug info (same build id; gdb, addr2line and systemd-coredump pick it up
#                 from /usr/lib/debug/.build-id/… or next to the binary)
#   man/man1/     kfr.1 and one page per command (`kfr man --dir`)
#   completions/  bash, zsh and fish scripts (`kfr completions`)
# Needs objcopy (GNU binutils). The commit in `kfr --version` comes from git, or from
# KFR_GIT_COMMIT when building outside a checkout.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/dist"}
cd "$root"
cargo build --profile dist --locked
mkdir -p "$out/man/man1" "$out/completions"
bin="$root/target/dist/kfr"
objcopy --only-keep-debug "$bin" "$out/kfr.debug"
chmod 0644 "$out/kfr.debug"
# --add-gnu-debuglink records the debug file's name and checksum in the stripped binary.
(cd "$out" && objcopy --strip-debug --add-gnu-debuglink=kfr.debug "$bin" kfr)
"$out/kfr" man --dir "$out/man/man1" >/dev/null
for shell in bash zsh fish; do
    "$out/kfr" completions "$shell" >"$out/completions/kfr.$shell"
done
"$out/kfr" --version
