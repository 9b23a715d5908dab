#!/usr/bin/env bash
# First-start initialisation for the official postgres image (mounted as
# /docker-entrypoint-initdb.d/initdb.sh; the repository's sql/ is mounted at /sql). The image
# runs it once, when the pgdata volume is created, as the postgres user, against a temporary
# server that listens on the Unix socket only.
#
# Applies every script of sql/ in order, then gives the login roles `ingestor`,
# `postgres_exporter` and `grafana_reader` their passwords, read from the secret files that docker-compose.yml mounts
# at /run/secrets. The sql/ scripts stay plain SQL (they also work mounted directly as init
# scripts, or with psql -f); only the passwords, which must not live in the repository, are set
# here.
#
# No password appears on a command line (visible in ps), in this script's output, or in the
# server log: psql reads the file itself, and the session turns statement logging off first.
set -euo pipefail

psql_admin() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" "$@"
}

for script in /sql/*.sql; do
    echo "initdb: applying $(basename "$script")"
    psql_admin -q -f "$script"
done

# Sets a login role's password from a secret file. psql reads the file (backquotes, with the
# path quoted for the shell by :'file'), strips the trailing newline, and quotes the value as a
# literal with :'password', so any character is safe.
set_password() {
    local role=$1 file=$2
    if [ ! -s "$file" ]; then
        echo "initdb: WARNING: no password file at $file; role $role cannot log in over TCP" >&2
        return
    fi
    psql_admin -q -v role="$role" -v file="$file" <<'SQL'
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
\set password `tr -d '\r\n' < :'file'`
ALTER ROLE :"role" PASSWORD :'password';
\unset password
SQL
    echo "initdb: password of role $role set from $file"
}

set_password ingestor "${INGESTOR_DB_PASSWORD_FILE:-/run/secrets/ingestor_db_password}"
set_password postgres_exporter "${EXPORTER_DB_PASSWORD_FILE:-/run/secrets/exporter_db_password}"
# Last: the compose health check takes grafana_reader's password as "initialisation finished".
set_password grafana_reader "${GRAFANA_DB_PASSWORD_FILE:-/run/secrets/grafana_db_password}"
