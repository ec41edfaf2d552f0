#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 and print the export line for the tests:
#   eval "$(.ci/postgres.sh)"   ->  AUTOTUNE_TEST_POSTGRES_URL=postgresql+psycopg2://...
# Idempotent: reuses a server already running from the same directory.  Works as root (runs the
# server as the 'postgres' user) and as an ordinary user.  Installs Debian's postgresql package
# when no server binaries are found.
set -euo pipefail
PGDIR="${AUTOTUNE_PGDIR:-/tmp/autotune-pg}"
PGPORT="${AUTOTUNE_PGPORT:-55432}"
DB=autotune_test

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && { echo "$d"; return; }; done
  command -v pg_ctl >/dev/null 2>&1 && { dirname "$(command -v pg_ctl)"; return; }
  return 1
}
BIN="$(find_bin || true)"
if [ -z "$BIN" ]; then
  echo "installing postgresql from Debian packages (slow)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2 || true
  apt-get install -y --no-install-recommends postgresql >&2
  BIN="$(find_bin)"
fi

if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  AS=(runuser -u postgres --)
else
  AS=()
fi

mkdir -p "$PGDIR"
[ "$(id -u)" = 0 ] && chown postgres "$PGDIR"
if [ ! -f "$PGDIR/data/PG_VERSION" ]; then
  "${AS[@]}" "$BIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust -E UTF8 >&2
fi
if ! "${AS[@]}" "$BIN/pg_ctl" -D "$PGDIR/data" status >/dev/null 2>&1; then
  "${AS[@]}" "$BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PGPORT -k $PGDIR -c max_connections=200 -c fsync=off" start >&2
fi
if ! "$BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc \
     "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1; then
  "$BIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres "$DB" >&2
fi
echo "export AUTOTUNE_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:$PGPORT/$DB"
