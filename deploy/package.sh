#!/bin/sh
# Builds a release into target/package/ (or $KFR_PACKAGE_OUT), offline, from the committed
# Cargo.lock:
#   kfr_VERSION_ARCH.deb              the Debian package (dpkg-deb; cargo-deb is not needed)
#   kfr-VERSION-linux-ARCH.tar.gz     the release archive: kfr, kfr.debug, man pages, completions,
#                                     the systemd unit, kfr.toml, the Containerfile
#   kfr-VERSION.cdx.json              CycloneDX SBOM of the crates in the binary (deploy/sbom.py)
#   SHA256SUMS                        of the three above (`sha256sum -c SHA256SUMS`)
#
# The binary: `cargo build --profile dist --locked`, split into a stripped `kfr` (symbol table
# kept) and `kfr.debug` (objcopy --only-keep-debug, tied by build id and GNU debuglink; gdb,
# addr2line and systemd-coredump find it next to the binary or under /usr/lib/debug/.build-id/).
# `kfr --version` names the commit, from git or from KFR_GIT_COMMIT outside a checkout.
#
# Needs: cargo, objcopy (binutils), dpkg-deb, gzip, tar, python3 (>= 3.11), sha256sum.
# For tests and packagers: KFR_PACKAGE_BIN=PATH packages that binary instead of building one;
# KFR_PACKAGE_FAST=1 compresses quickly (gzip -1) instead of for size.
# SOURCE_DATE_EPOCH (default: the last commit's time) dates every file, so a rebuild of the same
# commit gives the same archive.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${KFR_PACKAGE_OUT:-"$root/target/package"}
cd "$root"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH
if [ "${KFR_PACKAGE_FAST:-}" = 1 ]; then gz=1; debz="-Zgzip -z1"; else gz=9; debz="-Zxz"; fi

if [ -n "${KFR_PACKAGE_BIN:-}" ]; then
    bin=$KFR_PACKAGE_BIN
else
    cargo build --profile dist --locked
    bin="$root/target/dist/kfr"
fi

rm -rf "$out"
name="kfr-$version-linux-$arch"
stage="$out/stage/$name"
mkdir -p "$stage/man/man1" "$stage/completions"
objcopy --only-keep-debug "$bin" "$stage/kfr.debug"
chmod 0644 "$stage/kfr.debug"
# --add-gnu-debuglink records the debug file's name and checksum in the stripped binary.
(cd "$stage" && objcopy --strip-debug --add-gnu-debuglink=kfr.debug "$bin" kfr && chmod 0755 kfr)
"$stage/kfr" man --dir "$stage/man/man1" >/dev/null
"$stage/kfr" completions bash >"$stage/completions/kfr.bash"
"$stage/kfr" completions zsh >"$stage/completions/_kfr"
"$stage/kfr" completions fish >"$stage/completions/kfr.fish"
install -m 0644 deploy/kfr-sync.service deploy/kfr.toml deploy/Containerfile "$stage/"
install -m 0644 docs/kfr.example.toml docs/operations.md README.md "$stage/"

# Same bytes for the same commit: fixed order, owner and times.
tarball() { # DIR NAME OUTPUT
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        -C "$1" -cf - "$2" | gzip -n -"$gz" >"$3"
}
tarball "$out/stage" "$name" "$out/$name.tar.gz"

# The Debian package, staged as it installs.
deb="$out/stage/deb"
mkdir -p "$deb/DEBIAN" "$deb/usr/bin" "$deb/lib/systemd/system" "$deb/etc/kfr" \
    "$deb/usr/share/man/man1" "$deb/usr/share/doc/kfr" \
    "$deb/usr/share/bash-completion/completions" "$deb/usr/share/zsh/vendor-completions" \
    "$deb/usr/share/fish/vendor_completions.d"
install -m 0755 "$stage/kfr" "$deb/usr/bin/kfr"
install -m 0644 deploy/kfr-sync.service "$deb/lib/systemd/system/kfr-sync.service"
install -m 0644 deploy/kfr.toml "$deb/etc/kfr/kfr.toml"
for page in "$stage"/man/man1/*.1; do
    gzip -n -9 <"$page" >"$deb/usr/share/man/man1/$(basename "$page").gz"
done
install -m 0644 "$stage/completions/kfr.bash" "$deb/usr/share/bash-completion/completions/kfr"
install -m 0644 "$stage/completions/_kfr" "$deb/usr/share/zsh/vendor-completions/_kfr"
install -m 0644 "$stage/completions/kfr.fish" "$deb/usr/share/fish/vendor_completions.d/kfr.fish"
install -m 0644 docs/kfr.example.toml docs/operations.md "$deb/usr/share/doc/kfr/"
installed_kib=$(du -sk --exclude=DEBIAN "$deb" | cut -f1)
cat >"$deb/DEBIAN/control" <<EOF
Package: kfr
Version: $version
Architecture: $arch
Maintainer: kfr maintainers <kfr@localhost>
Section: admin
Priority: optional
Depends: libc6, adduser
Installed-Size: $installed_kib
Description: keeps Bits AS' Kundeforholdsregister (KFR) current
 Maskinporten tokens, the initial load, the sync agent (kfr-sync.service),
 Bits' integration checklist and a strict local mock of KFR and Maskinporten.
EOF
# The configuration is the operator's once installed: an upgrade never overwrites an edited one.
echo /etc/kfr/kfr.toml >"$deb/DEBIAN/conffiles"
cat >"$deb/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # The agent's user: the unit runs as it, and operators run kfr as it (sudo -u kfr kfr ...).
    if ! getent passwd kfr >/dev/null; then
        adduser --system --group --home /var/lib/kfr --no-create-home --shell /usr/sbin/nologin kfr
    fi
    install -d -o kfr -g kfr -m 0700 /var/lib/kfr
    if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
# Not enabled or started here: /etc/kfr/kfr.toml and the certificate must be filled in first
# (docs/operations.md). An upgrade restarts a running agent: the unit's drain loses nothing.
if [ "$1" = configure ] && [ -n "${2:-}" ] && [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet kfr-sync.service; then systemctl restart kfr-sync.service || true; fi
fi
EOF
cat >"$deb/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop kfr-sync.service || true
fi
EOF
cat >"$deb/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
# /var/lib/kfr is never removed, not even on purge: it is the record of what was sent to KFR.
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
EOF
chmod 0755 "$deb/DEBIAN/postinst" "$deb/DEBIAN/prerm" "$deb/DEBIAN/postrm"
find "$deb" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
# shellcheck disable=SC2086 # $debz is two words on purpose
dpkg-deb --root-owner-group $debz --build "$deb" "$out/kfr_${version}_$arch.deb" >/dev/null

python3 deploy/sbom.py "$out/kfr-$version.cdx.json"
(cd "$out" && sha256sum "kfr_${version}_$arch.deb" "$name.tar.gz" "kfr-$version.cdx.json" >SHA256SUMS)
rm -rf "$out/stage"
(cd "$out" && ls -1)
"$bin" --version
