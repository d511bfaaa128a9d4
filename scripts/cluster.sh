#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for the demo, the tests and the benchmark (never the
# system one). PostgreSQL refuses to run as root, so as root it runs as the postgres user.
#   cluster.sh start DIR PORT   creates DIR if needed and starts the server on 127.0.0.1:PORT
#   cluster.sh stop DIR
#   cluster.sh crash-restart DIR   stops it the hard way (immediate mode) and starts it again
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?usage: cluster.sh start DIR PORT | stop DIR}
dir=${2:?usage: cluster.sh start DIR PORT | stop DIR}

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    port=${3:?usage: cluster.sh start DIR PORT}
    if [ ! -f "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
      chmod 700 "$dir"
      as_pg "$PG_BIN/initdb" -D "$dir" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    if ! as_pg "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
      if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port"; then
        echo "cluster.sh: port $port is taken by another PostgreSQL server; stop it or choose another port" >&2
        exit 1
      fi
      as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_wal_size=4GB" start >/dev/null
    fi
    ;;
  stop)
    if [ -f "$dir/PG_VERSION" ]; then as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true; fi
    ;;
  crash-restart)
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -m immediate -w restart >/dev/null
    ;;
  *) echo "usage: cluster.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
