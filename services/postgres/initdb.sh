#!/usr/bin/env bash
# First-start initialisation for the official postgres image (mounted as
# /docker-entrypoint-initdb.d/initdb.sh; the repository's sql/ is mounted at /sql).
#
# Applies every script of sql/ in order, then gives the `ingestor` login role its password,
# read from a Compose secret file so it never appears in the environment or in `docker inspect`.
# The sql/ scripts stay plain SQL (they also work mounted directly as init scripts, or with
# psql -f); only the password, which must not live in the repository, is set here.
set -euo pipefail

psql_admin() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" "$@"
}

for script in /sql/*.sql; do
    echo "initdb: applying $(basename "$script")"
    psql_admin -q -f "$script"
done

# Sets a login role's password from a secret file; psql's :'var' quoting keeps any character
# of the password literal.
set_password() {
    local role=$1 file=$2
    if [ -s "$file" ]; then
        psql_admin -q -v password="$(tr -d '\r\n' <"$file")" \
            <<<"ALTER ROLE $role PASSWORD :'password';"
        echo "initdb: password of role $role set from $file"
    else
        echo "initdb: WARNING: no password file at $file; role $role cannot log in over TCP" >&2
    fi
}

set_password ingestor "${INGESTOR_DB_PASSWORD_FILE:-/run/secrets/ingestor_db_password}"
set_password grafana_reader "${GRAFANA_DB_PASSWORD_FILE:-/run/secrets/grafana_db_password}"
