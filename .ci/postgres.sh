#!/usr/bin/env bash
# Start a throw-away PostgreSQL on loopback for the test suite and print its admin URL.
# Usage: .ci/postgres.sh start|stop   (Debian's postgresql package; runs as root in CI)
set -euo pipefail
PGPORT=${PGPORT:-55432}
PGDATA=${PGDATA_DIR:-/tmp/gateway-ci-pg}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
case "${1:-start}" in
  start)
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
      rm -rf "$PGDATA"; mkdir -p "$PGDATA"; chown postgres:postgres "$PGDATA"
      su postgres -c "$BIN/initdb -D $PGDATA -A trust -U postgres --no-sync" > /dev/null
    fi
    if su postgres -c "$BIN/pg_ctl -D $PGDATA status" > /dev/null 2>&1; then
      echo "postgresql://postgres@127.0.0.1:$PGPORT/postgres"   # already running (an earlier run's server)
      exit 0
    fi
    su postgres -c "$BIN/pg_ctl -D $PGDATA -l $PGDATA/server.log -w -o '-c listen_addresses=127.0.0.1 -p $PGPORT -c fsync=off -c unix_socket_directories=/tmp -c max_connections=300' start" > /dev/null
    echo "postgresql://postgres@127.0.0.1:$PGPORT/postgres"
    ;;
  stop)
    su postgres -c "$BIN/pg_ctl -D $PGDATA -m fast stop" > /dev/null 2>&1 || true
    ;;
esac
