#!/usr/bin/env bash
# Every test: formatting and lints, the extension's unit and #[pg_test] tests (in PostgreSQL),
# the feeder's unit tests, the end-to-end tests (the feeder binary against a private cluster
# with the extension installed; TLS against a cluster of their own; the alert rules in a real
# Prometheus), the SQL tests (pg_regress, the isolation tester), the alert rules' promtool
# tests, and the supply chain: licenses,
# bans and sources (cargo deny), vulnerabilities (cargo audit against ../shared/advisory-db).
# Real Databento samples are read from ../shared/data when present; tests that need them say
# so when they skip.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== alert rules: promtool check and unit tests"
promtool check rules deploy/prometheus/tradebars-alerts.yml deploy/prometheus/tradebars-market-hours.yml
(cd deploy/prometheus && promtool test rules tradebars-alerts.test.yml tradebars-alerts.no-market-hours.test.yml)

echo "== extension: unit and #[pg_test] tests in PostgreSQL 15"
PGTEST_DIR=${TMPDIR:-/tmp}/tradebars-pgtest
rm -rf "$PGTEST_DIR"
RESULTS=$(mktemp)
(cd extension && cargo pgrx test pg15 --runas postgres --pgdata "$PGTEST_DIR") 2>&1 | tee -a "$RESULTS"

echo "== install the extension for the end-to-end tests"
bash scripts/install-extension.sh

echo "== feeder unit tests and end-to-end tests"
# The end-to-end tests start their cluster in target/e2e-pgdata-PORT; stop it however they end.
trap 'bash scripts/cluster.sh stop "${CARGO_TARGET_DIR:-target}/e2e-pgdata-${TRADEBARS_TEST_PORT:-55439}"' EXIT
cargo build -p tradebars-feeder --quiet
cargo test -p tradebars-contract -p tradebars-feeder -p tradebars-tests 2>&1 | tee -a "$RESULTS"

echo "== SQL tests: pg_regress (test/regress) and the isolation tester (test/isolation)"
bash scripts/regress.sh 2>&1 | tee -a "$RESULTS"

echo "== supply chain: licenses, bans, sources (cargo deny, deny.toml)"
# Pinned: these versions build with the project's Rust (1.95).
CARGO_DENY_VERSION=0.20.2
CARGO_AUDIT_VERSION=0.22.2
if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  echo "installing cargo-deny $CARGO_DENY_VERSION (about 2.5 minutes on 2 cores)"
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --quiet
fi
cargo deny check --hide-inclusion-graph licenses bans sources

echo "== supply chain: vulnerabilities (cargo audit, ../shared/advisory-db)"
ADVISORY_DB=../shared/advisory-db
if [ -d "$ADVISORY_DB" ]; then
  if ! cargo audit --version 2>/dev/null | grep -q "$CARGO_AUDIT_VERSION"; then
    echo "installing cargo-audit $CARGO_AUDIT_VERSION (about 5.5 minutes on 2 cores)"
    cargo install cargo-audit --version "$CARGO_AUDIT_VERSION" --locked --quiet
  fi
  snapshot=$(grep -o '([0-9]\{4\}-[0-9][0-9]-[0-9][0-9])' "$ADVISORY_DB/SNAPSHOT.md" 2>/dev/null | head -1 | tr -d '()' || true)
  if [ -n "$snapshot" ]; then
    echo "advisory database: snapshot of $snapshot, $(( ($(date +%s) - $(date -d "$snapshot" +%s)) / 86400 )) days old; advisories published since are not checked"
  fi
  # Fails on any vulnerability; "unmaintained" and other warnings are printed, not failed.
  cargo audit --db "$ADVISORY_DB" --no-fetch
else
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo "SKIPPED: cargo audit: $ADVISORY_DB is absent, so NO VULNERABILITY CHECK WAS DONE"
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
fi

# The package: built and installed with dpkg -i, which replaces the system's tradebars files,
# so on CI's machine (CI=true) or when asked (TRADEBARS_PACKAGE_TEST=1) only.
if [ "${CI:-}" = true ] || [ "${TRADEBARS_PACKAGE_TEST:-}" = 1 ]; then
  echo "== package: scripts/package.sh, then dpkg -i and its checks (scripts/package-test.sh)"
  bash scripts/package.sh
  bash scripts/package-test.sh 2>&1 | tee -a "$RESULTS"
else
  echo "SKIPPED: the package test (dpkg -i replaces the system's tradebars files); CI runs it, TRADEBARS_PACKAGE_TEST=1 runs it here"
fi

# One closing line over every runner above.
awk '/^test result:|^package checks:|^regress checks:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$RESULTS"
rm -f "$RESULTS"
