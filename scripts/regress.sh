#!/usr/bin/env bash
# SQL-level tests of the installed extension, PostgreSQL's own way: pg_regress runs the files
# of test/regress/sql and compares their output with test/regress/expected; the isolation
# tester runs test/isolation/specs (bars_rollup() against a COPY in progress and against
# another rollup) against test/isolation/expected. Both come with postgresql-server-dev-15.
# A private cluster on TRADEBARS_REGRESS_PORT (default 55441), stopped at the end. Prints
# `regress checks: N passed, M failed`; a difference is shown and fails the run.
#   regress.sh            (the extension must be installed: scripts/install-extension.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

PGXS=$(/usr/lib/postgresql/15/bin/pg_config --pgxs)
BIN=$(dirname "$PGXS")/../test
PORT=${TRADEBARS_REGRESS_PORT:-55441}
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
DATA=$TARGET/regress-pgdata
OUT=$TARGET/regress
mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$OUT"

bash scripts/cluster.sh start "$DATA" "$PORT"
trap 'bash scripts/cluster.sh stop "$DATA"' EXIT

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
common=(--host=127.0.0.1 --port="$PORT" --user=postgres)
passed=0 failed=0
run() {  # run NAME TOOL ARGS...: counts the tests of one suite from its own summary
  local name=$1 log="$OUT/$1.log"; shift
  local ok bad status=0
  as_pg "$@" >"$log" 2>&1 || status=$?
  ok=$(grep -cE '^(ok|test) .* ok( |$)|^ok [0-9]+ ' "$log" || true)
  bad=$(grep -cE ' FAILED( |$)|^not ok ' "$log" || true)
  passed=$((passed + ok)) failed=$((failed + bad))
  if [ "$bad" -gt 0 ] || [ "$ok" -eq 0 ] || [ "$status" -ne 0 ]; then
    cat "$log"
    [ -f "$OUT/$name/regression.diffs" ] && cat "$OUT/$name/regression.diffs"
    # it did not run, or stopped before its summary (a test without its expected output)
    if [ "$bad" -eq 0 ]; then failed=$((failed + 1)); fi
  fi
  return 0
}
run regress "$BIN/regress/pg_regress" "${common[@]}" --inputdir=test/regress \
  --outputdir="$OUT/regress" --dbname=tradebars_regress --schedule=test/regress/regress_schedule
run isolation "$BIN/isolation/pg_isolation_regress" "${common[@]}" --inputdir=test/isolation \
  --outputdir="$OUT/isolation" --dbname=tradebars_isolation --schedule=test/isolation/isolation_schedule
echo "regress checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
