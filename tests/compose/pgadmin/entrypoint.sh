#!/usr/bin/env bash
# Entrypoint of the pgAdmin stand-in image (tests/compose/pgadmin/Dockerfile), written for this
# project from the official image's documented environment: on the first start (no
# /var/lib/pgadmin/pgadmin4.db) it creates the login from PGADMIN_DEFAULT_EMAIL and
# PGADMIN_DEFAULT_PASSWORD (or _FILE) and loads PGADMIN_SERVER_JSON_FILE for that user; then it
# serves pgAdmin with gunicorn on PGADMIN_LISTEN_PORT.
set -Eeuo pipefail

if [ -n "${PGADMIN_DEFAULT_PASSWORD_FILE:-}" ]; then
    PGADMIN_DEFAULT_PASSWORD=$(<"$PGADMIN_DEFAULT_PASSWORD_FILE")
    unset PGADMIN_DEFAULT_PASSWORD_FILE
fi

cat >/pgadmin4/config_distro.py <<PY
SERVER_MODE = True
CA_FILE = '/etc/ssl/certs/ca-certificates.crt'
LOG_FILE = '/dev/null'
DATA_DIR = '/var/lib/pgadmin'
DEFAULT_BINARY_PATHS = {'pg': '/usr/local/pgsql-15/bin', 'pg-15': '/usr/local/pgsql-15/bin'}
PY

if [ ! -f /var/lib/pgadmin/pgadmin4.db ]; then
    if [ -z "${PGADMIN_DEFAULT_EMAIL:-}" ] || [ -z "${PGADMIN_DEFAULT_PASSWORD:-}" ]; then
        echo "error: PGADMIN_DEFAULT_EMAIL and PGADMIN_DEFAULT_PASSWORD(_FILE) are required" >&2
        exit 1
    fi
    PGADMIN_SETUP_EMAIL=$PGADMIN_DEFAULT_EMAIL PGADMIN_SETUP_PASSWORD=$PGADMIN_DEFAULT_PASSWORD \
        /venv/bin/python3 /pgadmin4/setup.py setup-db
    servers=${PGADMIN_SERVER_JSON_FILE:-/pgadmin4/servers.json}
    if [ -f "$servers" ]; then
        /venv/bin/python3 /pgadmin4/setup.py load-servers "$servers" --user "$PGADMIN_DEFAULT_EMAIL"
    fi
fi
unset PGADMIN_DEFAULT_PASSWORD

exec /venv/bin/gunicorn --bind "[::]:${PGADMIN_LISTEN_PORT:-80}" -w 1 --threads 25 \
    --access-logfile - --chdir /pgadmin4 pgAdmin4:app
