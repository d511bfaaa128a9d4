#!/usr/bin/env bash
# Builds the Debian package tradebars_<version>_<arch>.deb in target/package/:
#   - the extension for PostgreSQL 15 (cargo pgrx package: tradebars.so, tradebars.control,
#     tradebars--<version>.sql) with every released script of sql/ (tradebars--X.sql and
#     tradebars--X--Y.sql) and the upgrade script of the version under work (sql/upgrade/,
#     by upgrade-scripts.sh), so ALTER EXTENSION tradebars UPDATE works from each of them;
#   - /usr/bin/tradebars-feeder (release build);
#   - the systemd unit /lib/systemd/system/tradebars-feeder.service;
#   - in /usr/share/doc/tradebars: the runbook (README.md), the env example, the Prometheus
#     rules and the Grafana dashboard.
# The version is the extension's (extension/Cargo.toml). Depends: postgresql-15.
#   scripts/package.sh            prints the path of the .deb on its last line
# Install it with scripts/package-test.sh (dpkg -i, then checks) or dpkg -i.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
VERSION=$(sed -n '/^\[package\]/,/^\[/s/^version = "\(.*\)"/\1/p' extension/Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
OUT=$TARGET/package
NAME=tradebars_${VERSION}_${ARCH}
ROOT=$OUT/$NAME
DOC=$ROOT/usr/share/doc/tradebars

bash scripts/setup.sh
mkdir -p "$OUT"
echo "package: building the extension (cargo pgrx package) and the feeder, release"
(cd extension && cargo pgrx package --pg-config "$PG_CONFIG") >"$OUT.build.log" 2>&1 ||
  { cat "$OUT.build.log" >&2; exit 1; }
cargo build --release -p tradebars-feeder --quiet

rm -rf "$ROOT"
mkdir -p "$ROOT/DEBIAN" "$DOC/monitoring" "$ROOT/lib/systemd/system" "$ROOT/usr/bin"
cp -a "$TARGET/release/tradebars-pg$PG_MAJOR/." "$ROOT/"
EXT=$ROOT$("$PG_CONFIG" --sharedir)/extension
LIB=$ROOT$("$PG_CONFIG" --pkglibdir)
test -f "$LIB/tradebars.so" -a -f "$EXT/tradebars.control" -a -f "$EXT/tradebars--$VERSION.sql" || {
  echo "package: cargo pgrx package did not produce tradebars.so, tradebars.control and tradebars--$VERSION.sql" >&2
  exit 1
}
# The released versions' scripts, whatever is in sql/ at build time.
released=(sql/tradebars--*.sql)
cp "${released[@]}" "$EXT/"
bash scripts/upgrade-scripts.sh "$EXT"
grep -q "^default_version = '$VERSION'" "$EXT/tradebars.control" || {
  echo "package: tradebars.control's default_version is not $VERSION" >&2
  exit 1
}

install -m 755 "$TARGET/release/tradebars-feeder" "$ROOT/usr/bin/tradebars-feeder"
if command -v strip >/dev/null; then
  strip --strip-unneeded "$ROOT/usr/bin/tradebars-feeder" "$LIB/tradebars.so"
fi
packaged=$("$ROOT/usr/bin/tradebars-feeder" --version)
[ "$packaged" = "tradebars-feeder $VERSION" ] || {
  echo "package: the feeder says '$packaged', the package is $VERSION" >&2
  exit 1
}
# The unit of deploy/, with the packaged binary's path.
sed 's#/usr/local/bin/tradebars-feeder#/usr/bin/tradebars-feeder#g' deploy/tradebars-feeder.service \
  >"$ROOT/lib/systemd/system/tradebars-feeder.service"
chmod 644 "$ROOT/lib/systemd/system/tradebars-feeder.service"
install -m 644 README.md "$DOC/README.md"
install -m 644 deploy/tradebars-feeder.env.example "$DOC/tradebars-feeder.env.example"
install -m 644 deploy/prometheus/tradebars-alerts.yml deploy/prometheus/tradebars-market-hours.yml \
  deploy/grafana/tradebars-dashboard.json "$DOC/monitoring/"
cat >"$DOC/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tradebars
Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF

# Shared libraries the two binaries need, as Debian dependencies.
shlibs=$(
  tmp=$(mktemp -d)
  mkdir -p "$tmp/debian"
  printf 'Source: tradebars\n\nPackage: tradebars\nArchitecture: any\n' >"$tmp/debian/control"
  (cd "$tmp" && dpkg-shlibdeps -O "$ROOT/usr/bin/tradebars-feeder" "$LIB/tradebars.so" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p') || true
  rm -rf "$tmp"
)
depends="postgresql-$PG_MAJOR${shlibs:+, $shlibs}"

cat >"$ROOT/DEBIAN/control" <<EOF
Package: tradebars
Version: $VERSION
Architecture: $ARCH
Maintainer: tradebars <dev@tradebars.invalid>
Section: database
Priority: optional
Depends: $depends
Installed-Size: $(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
Description: exact 1-minute OHLCV bars from Databento trades, inside PostgreSQL
 The PostgreSQL $PG_MAJOR extension tradebars (CREATE EXTENSION tradebars; ALTER EXTENSION
 tradebars UPDATE from any released version) and tradebars-feeder, which streams Databento
 trades into it, with its systemd unit (not enabled: configure /etc/tradebars/feeder.env
 first). The runbook, the env example, Prometheus rules and a Grafana dashboard are in
 /usr/share/doc/tradebars.
EOF
cat >"$ROOT/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# The unit runs as the system user tradebars and reads /etc/tradebars/feeder.env.
set -e
if [ "$1" = configure ]; then
    if ! getent passwd tradebars >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin tradebars
    fi
    install -d -m 755 /etc/tradebars
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
fi
exit 0
EOF
cat >"$ROOT/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
exit 0
EOF
chmod 755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/postrm"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | xargs -0 md5sum) >"$ROOT/DEBIAN/md5sums"

dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$OUT/$NAME.deb" >/dev/null
echo "package: $NAME.deb ($(du -h "$OUT/$NAME.deb" | cut -f1)), Depends: $depends"
echo "package: released scripts: ${released[*]##*/}"
echo "$OUT/$NAME.deb"
