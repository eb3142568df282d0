#!/bin/sh
# The compose file's PostgreSQL (service db), run from the agent image,
# which carries the PostgreSQL server already. First start: initdb, the
# platform's database with its two roles (docs/platform-config.md, "Two
# database roles") and the demo source database "shop" the agent clones.
# Then postgres in the foreground (compose stops it with SIGINT: fast).
set -eu
PGDATA=/var/lib/postgresql/data
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
: "${THINLAB_DB_SUPERUSER_PASSWORD:?}" "${THINLAB_DB_OWNER_PASSWORD:?}" "${THINLAB_DB_APP_PASSWORD:?}" "${THINLAB_SOURCE_PASSWORD:?}"
as_postgres() { runuser -u postgres -- "$@"; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  install -d -o postgres -g postgres -m 0700 "$PGDATA"
  pw=$(mktemp)
  echo "$THINLAB_DB_SUPERUSER_PASSWORD" >"$pw"
  chown postgres "$pw"
  as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 --pwfile="$pw" >/dev/null
  rm -f "$pw"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
  psql() { as_postgres "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
  psql -d postgres \
    -v owner_pw="$THINLAB_DB_OWNER_PASSWORD" -v app_pw="$THINLAB_DB_APP_PASSWORD" -v source_pw="$THINLAB_SOURCE_PASSWORD" <<'SQL'
CREATE ROLE thinlab_owner LOGIN PASSWORD :'owner_pw';
CREATE ROLE thinlab_app LOGIN PASSWORD :'app_pw';
CREATE DATABASE thinlab OWNER thinlab_owner;
CREATE ROLE app LOGIN PASSWORD :'source_pw';
CREATE DATABASE shop OWNER app;
SQL
  psql -d shop -c "SET ROLE app" -f /compose-demo/shop.sql >/dev/null
  as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  echo "db: initialized (databases thinlab and shop)"
fi
# setpriv execs postgres itself (runuser would stay as PID 1 and not pass
# compose's SIGINT on, so the stop would wait for the kill).
exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$PGBIN/postgres" -D "$PGDATA"
