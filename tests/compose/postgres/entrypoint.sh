#!/usr/bin/env bash
# Entrypoint of the PostgreSQL stand-in image (tests/compose/postgres/Dockerfile). Written for
# this project from the official image's documented behaviour, so that docker-compose.yml's
# settings (capabilities, read-only root, tmpfs, secrets, init scripts) meet the same demands
# they meet with the official image:
#   as root:     read *_FILE secrets, make PGDATA 0700 and hand PGDATA and the socket
#                directory to postgres (CHOWN, FOWNER, DAC_READ_SEARCH), then re-run itself as
#                postgres through gosu (SETUID, SETGID);
#   as postgres: on an empty PGDATA, initdb, a temporary socket-only server, CREATE DATABASE,
#                /docker-entrypoint-initdb.d/*, stop; then exec the server.
set -Eeuo pipefail

say() { printf 'stand-in entrypoint: %s\n' "$*"; }

# VAR or VAR_FILE (not both), exported like the official entrypoint does.
from_env_or_file() {
    local var=$1 default=${2:-} file_var="${1}_FILE"
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        echo "error: both $var and $file_var are set" >&2
        exit 1
    fi
    local value=$default
    if [ -n "${!var:-}" ]; then
        value=${!var}
    elif [ -n "${!file_var:-}" ]; then
        value=$(<"${!file_var}")
    fi
    export "$var=$value"
    unset "$file_var"
}

run_sql() {
    PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password \
        --username "$POSTGRES_USER" "$@"
}

initialise() {
    say "initialising $PGDATA"
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA"
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -p 5432" start
    if [ -z "$(run_sql --dbname postgres -tA -v db="$POSTGRES_DB" \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")" ]; then
        run_sql --dbname postgres -v db="$POSTGRES_DB" <<<'CREATE DATABASE :"db"'
    fi
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
            *.sh) if [ -x "$f" ]; then say "running $f"; "$f"; else say "sourcing $f"; . "$f"; fi ;;
            *.sql) say "running $f"; run_sql --dbname "$POSTGRES_DB" -f "$f" ;;
            *) say "ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    say "initialisation complete"
}

if [ "${1:-}" = postgres ]; then
    from_env_or_file POSTGRES_PASSWORD
    from_env_or_file POSTGRES_USER postgres
    from_env_or_file POSTGRES_DB "$POSTGRES_USER"
    if [ "$(id -u)" = 0 ]; then
        mkdir -p "$PGDATA"
        chmod 0700 "$PGDATA" || :
        mkdir -p /var/run/postgresql
        chmod 3775 /var/run/postgresql || :
        find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
        exec gosu postgres "$BASH_SOURCE" "$@"
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        if [ -z "$POSTGRES_PASSWORD" ]; then
            echo "error: POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) is required" >&2
            exit 1
        fi
        initialise
    else
        say "$PGDATA holds a database; skipping initialisation"
    fi
fi
exec "$@"
