#!/usr/bin/env bash
# Every test: formatting and lints, the extension's unit and #[pg_test] tests (in PostgreSQL),
# the feeder's unit tests, and the end-to-end tests (the feeder binary against a private
# cluster with the extension installed). Real Databento samples are read from ../shared/data
# when present; tests that need them say so when they skip.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== extension: unit and #[pg_test] tests in PostgreSQL 15"
PGTEST_DIR=${TMPDIR:-/tmp}/tradebars-pgtest
rm -rf "$PGTEST_DIR"
RESULTS=$(mktemp)
(cd extension && cargo pgrx test pg15 --runas postgres --pgdata "$PGTEST_DIR") 2>&1 | tee -a "$RESULTS"

echo "== install the extension for the end-to-end tests"
bash scripts/install-extension.sh

echo "== feeder unit tests and end-to-end tests"
# The end-to-end tests start their cluster in target/e2e-pgdata; stop it however they end.
trap 'bash scripts/cluster.sh stop "${CARGO_TARGET_DIR:-target}/e2e-pgdata"' EXIT
cargo build -p tradebars-feeder --quiet
cargo test -p tradebars-feeder -p tradebars-tests 2>&1 | tee -a "$RESULTS"

# One closing line over every runner above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$RESULTS"
rm -f "$RESULTS"
