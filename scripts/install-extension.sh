#!/usr/bin/env bash
# Builds and installs the tradebars extension into Debian's PostgreSQL 15, together with the
# released versions' scripts in sql/ (tradebars--X.sql, tradebars--X--Y.sql), so that
# ALTER EXTENSION tradebars UPDATE works from every earlier version.
#   install-extension.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

cargo pgrx install -p tradebars ${1:+"$1"} --pg-config "$PG_CONFIG" >/dev/null
as_root cp sql/tradebars--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
