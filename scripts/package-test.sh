#!/usr/bin/env bash
# Installs the package on this machine with dpkg -i and checks it:
#   - the packaged files are where PostgreSQL 15 and systemd look for them;
#   - tradebars-feeder --version prints the package's version;
#   - in a private cluster: CREATE EXTENSION tradebars gives that version, and an extension
#     created at 0.1.0 is updated to it with ALTER EXTENSION tradebars UPDATE, from the
#     packaged files only; trades loaded by the packaged feeder become bars in both;
#   - systemd-analyze verify accepts the unit, where systemd-analyze is present.
# It REPLACES the tradebars files of the system's PostgreSQL 15: run it on a machine of its
# own (CI does, from scripts/test.sh, and .github/workflows/package.yml).
#   scripts/package-test.sh [DEB]     default: the newest target/package/tradebars_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
DEB=${1:-$(ls -t "$TARGET"/package/tradebars_*.deb 2>/dev/null | head -1)}
[ -f "$DEB" ] || { echo "package-test: no .deb (run scripts/package.sh first)" >&2; exit 1; }
VERSION=$(dpkg-deb -f "$DEB" Version)
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
DIR=${TRADEBARS_PACKAGE_TEST_DIR:-${TMPDIR:-/tmp}/tradebars-package-test}
PORT=${TRADEBARS_PACKAGE_TEST_PORT:-55443}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
passed=0
failed=0
check() {
  local what=$1
  shift
  if "$@"; then
    echo "  ok: $what"
    passed=$((passed + 1))
  else
    echo "  FAILED: $what"
    failed=$((failed + 1))
  fi
}

echo "== dpkg -i $(basename "$DEB")"
if ! as_root dpkg -i "$DEB"; then
  # a dependency missing on this machine: let apt bring it, then configure
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq
fi
dpkg-query -W -f='${Package} ${Version} ${Status}\n' tradebars

echo "== the installed files"
EXT=$("$PG_CONFIG" --sharedir)/extension
LIB=$("$PG_CONFIG" --pkglibdir)
check "tradebars.so in $LIB" test -f "$LIB/tradebars.so"
check "tradebars.control in $EXT" test -f "$EXT/tradebars.control"
check "tradebars--$VERSION.sql" test -f "$EXT/tradebars--$VERSION.sql"
shopt -s nullglob  # no sql/upgrade/ template right after a release
for script in sql/tradebars--*.sql sql/upgrade/tradebars--*.sql; do
  check "released script $(basename "$script") (owned by the package)" \
    bash -c "dpkg -S '$EXT/$(basename "$script")' | grep -q '^tradebars:'"
done
check "the unit /lib/systemd/system/tradebars-feeder.service" test -f /lib/systemd/system/tradebars-feeder.service
check "the runbook and the env example in /usr/share/doc/tradebars" \
  test -f /usr/share/doc/tradebars/README.md -a -f /usr/share/doc/tradebars/tradebars-feeder.env.example
check "the system user tradebars" getent passwd tradebars

echo "== tradebars-feeder --version"
shown=$(/usr/bin/tradebars-feeder --version)
echo "  $shown"
check "it prints the package's version $VERSION" test "$shown" = "tradebars-feeder $VERSION"

echo "== CREATE EXTENSION and ALTER EXTENSION ... UPDATE from 0.1.0, in a private cluster"
rm -rf "$DIR"
mkdir -p "$DIR"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$DIR"
bash scripts/cluster.sh start "$DIR/pgdata" "$PORT"
trap 'bash scripts/cluster.sh stop "$DIR/pgdata"' EXIT
psql_() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
psql_ -d postgres -c "CREATE DATABASE fresh" -c "CREATE DATABASE upgraded"
psql_ -d fresh -c "CREATE EXTENSION tradebars"
check "CREATE EXTENSION tradebars gives $VERSION" \
  test "$(psql_ -d fresh -c "SELECT extversion FROM pg_extension WHERE extname = 'tradebars'")" = "$VERSION"
psql_ -d upgraded -c "CREATE EXTENSION tradebars VERSION '0.1.0'"
check "CREATE EXTENSION tradebars VERSION '0.1.0'" \
  test "$(psql_ -d upgraded -c "SELECT extversion FROM pg_extension WHERE extname = 'tradebars'")" = "0.1.0"
psql_ -d upgraded -c "ALTER EXTENSION tradebars UPDATE"
check "ALTER EXTENSION tradebars UPDATE reaches $VERSION" \
  test "$(psql_ -d upgraded -c "SELECT extversion FROM pg_extension WHERE extname = 'tradebars'")" = "$VERSION"

/usr/bin/tradebars-feeder generate --symbols 5 --trades 2000 --seed 3 --out "$DIR/sample.dbn" >/dev/null
for db in fresh upgraded; do
  DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/$db" /usr/bin/tradebars-feeder replay "$DIR/sample.dbn" --rollup
  check "the packaged feeder's trades are bars in $db" \
    test "$(psql_ -d "$db" -c "SELECT coalesce(sum(trade_count), 0) FROM price_bars")" = 2000
done

echo "== systemd-analyze verify"
# A warning (an unknown key, a missing binary) fails the check too.
verify_unit() {
  local out ok=0
  out=$(systemd-analyze verify /lib/systemd/system/tradebars-feeder.service 2>&1) || ok=1
  if [ -n "$out" ]; then
    echo "$out" | sed 's/^/    /'
    ok=1
  fi
  return $ok
}
if command -v systemd-analyze >/dev/null; then
  check "systemd-analyze verify tradebars-feeder.service, without a warning" verify_unit
else
  echo "  SKIPPED: systemd-analyze is not on this machine"
fi

echo "package checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
