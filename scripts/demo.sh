#!/usr/bin/env bash
# The main job on an embedded default: set up what is missing, build, start a private
# PostgreSQL cluster, generate sample trades, load them, roll them up and print bars.
#   scripts/demo.sh          run the demo (the cluster stays up for you to explore)
#   scripts/demo.sh stop     stop the demo cluster
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=${TRADEBARS_DEMO_DIR:-${TMPDIR:-/tmp}/tradebars-demo}
PORT=${TRADEBARS_DEMO_PORT:-55432}
URL="postgres://postgres@127.0.0.1:$PORT/tradebars"

if [ "${1:-}" = "stop" ]; then
  bash scripts/cluster.sh stop "$DEMO_DIR/pgdata"
  echo "demo cluster stopped"
  exit 0
fi

bash scripts/setup.sh
echo "demo: building the extension and the feeder (release)"
bash scripts/install-extension.sh --release 2>"$DEMO_DIR.build.log" || { cat "$DEMO_DIR.build.log" >&2; exit 1; }
cargo build --release -p tradebars-feeder --quiet
FEEDER=target/release/tradebars-feeder

mkdir -p "$DEMO_DIR"
bash scripts/cluster.sh start "$DEMO_DIR/pgdata" "$PORT"
PGOPTIONS="-c client_min_messages=warning" psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "DROP DATABASE IF EXISTS tradebars" -c "CREATE DATABASE tradebars"
psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d tradebars -c "CREATE EXTENSION tradebars"

echo
"$FEEDER" generate --symbols 50 --trades 200000 --out "$DEMO_DIR/sample.trades.dbn.zst"
DATABASE_URL=$URL "$FEEDER" replay "$DEMO_DIR/sample.trades.dbn.zst" --rollup
echo
echo "SELECT * FROM bars('WGRX', '2025-10-24 14:30+00', '2025-10-24 14:40+00');"
psql -X -h 127.0.0.1 -p "$PORT" -U postgres -d tradebars -P footer=off -c \
  "SELECT \"timestamp\", open, high, low, close, volume, trade_count, vwap FROM bars('WGRX', '2025-10-24 14:30+00', '2025-10-24 14:40+00')"
echo "SELECT * FROM bars('WGRX', '2025-10-24 14:30+00', '2025-10-24 21:00+00', bucket => '1 hour');"
psql -X -h 127.0.0.1 -p "$PORT" -U postgres -d tradebars -P footer=off -c \
  "SELECT \"timestamp\", open, high, low, close, volume, trade_count, vwap FROM bars('WGRX', '2025-10-24 14:30+00', '2025-10-24 21:00+00', bucket => '1 hour')"
echo "The cluster is still running: psql $URL"
echo "Stop it with: scripts/demo.sh stop"
