#!/usr/bin/env bash
# Builds and installs the tradebars extension into Debian's PostgreSQL 15, together with the
# released versions' scripts in sql/ (tradebars--X.sql, tradebars--X--Y.sql) and the upgrade
# script of the version under work (made from sql/upgrade/ by upgrade-scripts.sh), so that
# ALTER EXTENSION tradebars UPDATE works from every earlier version.
#   install-extension.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

cargo pgrx install -p tradebars ${1:+"$1"} --pg-config "$PG_CONFIG" >/dev/null
ext_dir="$("$PG_CONFIG" --sharedir)/extension"
as_root cp sql/tradebars--*.sql "$ext_dir/"
as_root bash scripts/upgrade-scripts.sh "$ext_dir"
