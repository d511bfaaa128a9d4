#!/usr/bin/env bash
# Installs what building, testing and running tradebars needs, and only what is missing:
# Debian's PostgreSQL 15 with its server headers, libclang (for pgrx's bindings),
# sudo (cargo pgrx test uses it to install the extension), openssl (the TLS tests make their
# certificates with it), prometheus (promtool and the alerts' end-to-end test; on a machine
# with systemd, Debian's package also starts a Prometheus service on :9090) and cargo-pgrx.
set -euo pipefail

PGRX_VERSION=0.18.0
PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" libclang-dev sudo openssl prometheus; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (takes about 6 minutes on 2 cores)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
fi
echo "setup: toolchain ready (cargo-pgrx $PGRX_VERSION, PostgreSQL $PG_MAJOR)"
