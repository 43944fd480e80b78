#!/bin/sh
# Like the official postgres image: on an empty $PGDATA, initdb with POSTGRES_USER/POSTGRES_PASSWORD,
# create POSTGRES_DB, accept password logins from the network; then run the server as `postgres`.
set -e
PATH="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1):$PATH"
export PATH
if [ "$1" != "postgres" ]; then exec "$@"; fi
shift
mkdir -p "$PGDATA" && chown -R postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    user="${POSTGRES_USER:-postgres}"
    pwfile="$(mktemp)" && printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" >"$pwfile"
    chown postgres "$pwfile"
    runuser -u postgres -- initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    db="${POSTGRES_DB:-$user}"
    if [ "$db" != "postgres" ]; then
        runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='' &
        until runuser -u postgres -- pg_isready -q -h /var/run/postgresql; do sleep 0.2; done
        runuser -u postgres -- psql -q -h /var/run/postgresql -U "$user" -d postgres -c "CREATE DATABASE \"$db\""
        runuser -u postgres -- pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
fi
exec runuser -u postgres -- postgres -D "$PGDATA" "$@"
