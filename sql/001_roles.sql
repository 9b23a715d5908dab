-- 001_roles.sql: the database roles the stack uses, and the lock-down of schema `public`.
--
-- Why this file exists: the ingestor must not run as a superuser or as the owner of the tables,
-- so a bug (or an attacker who gets its credentials) can only append events and bookkeep the
-- ledger, never rewrite history or change the schema. Dashboards get their own read-only group.
--
-- How these scripts are applied (all of 0*.sql, in filename order):
--   * by the official postgres image from /docker-entrypoint-initdb.d on first start;
--   * by `psql -v ON_ERROR_STOP=1 -f <file>` by hand or from deployment scripts;
--   * by the test harness (tests/src/lib.rs) with tokio-postgres `batch_execute`, many
--     databases of one cluster at the same time.
-- Therefore: plain SQL only (no psql meta-commands), safe to apply twice, and safe to apply
-- concurrently into different databases of the same cluster.
--
-- Roles are cluster-global objects. Two sessions creating the same role at the same time (tests
-- in parallel) race: the loser fails with duplicate_object or, if it passed the existence check
-- before the winner committed, with unique_violation on pg_authid. Both are swallowed below.
-- Never ALTER ROLE (or COMMENT ON ROLE outside the creating branch) in these scripts: concurrent
-- updates of the same pg_authid / pg_shdescription row fail with "tuple concurrently updated".

-- ingestor: the service account of the ingestor. It logs in; it owns nothing.
-- No password is set here on purpose: secrets do not belong in a repository. The deployment
-- sets it once with:  ALTER ROLE ingestor PASSWORD '...';
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'ingestor') THEN
        CREATE ROLE ingestor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
        COMMENT ON ROLE ingestor IS
            'Service account of the ingestor: appends events, maintains the ingestion ledger. '
            'Password is set by the deployment (ALTER ROLE ingestor PASSWORD ...).';
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- another session created it concurrently; that is the outcome we wanted
END
$$;

-- analyst: a group role (NOLOGIN) for read-only access, e.g. dashboards. Grant it to the
-- login roles that need it:  GRANT analyst TO grafana;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'analyst') THEN
        CREATE ROLE analyst NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
        COMMENT ON ROLE analyst IS
            'Read-only group role for dashboards and analytics; grant it to login roles.';
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- another session created it concurrently
END
$$;

-- grafana_reader: Grafana's login for the Business dashboard; a member of analyst and nothing
-- else, so it may only read. The membership is granted by the session that creates the role,
-- so concurrent applications never update the same membership row. No password here: the
-- deployment sets it (services/postgres/initdb.sh reads it from a Compose secret).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'grafana_reader') THEN
        CREATE ROLE grafana_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
            NOBYPASSRLS IN ROLE analyst;
        COMMENT ON ROLE grafana_reader IS
            'Grafana''s read-only login (member of analyst). Password set by the deployment.';
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- another session created it concurrently
END
$$;

-- postgres_exporter: the login of the postgres-exporter service (Prometheus metrics of the
-- server). A member of PostgreSQL's built-in pg_monitor group and nothing else: it may read the
-- statistics views and settings of every session and table, but no table's rows (it is not an
-- analyst). Three connections at most, so a misbehaving exporter cannot take the ingestor's.
-- No password here: services/postgres/initdb.sh sets it from a Compose secret.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'postgres_exporter') THEN
        CREATE ROLE postgres_exporter LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
            NOBYPASSRLS CONNECTION LIMIT 3 IN ROLE pg_monitor;
        COMMENT ON ROLE postgres_exporter IS
            'Login of the postgres-exporter service (member of pg_monitor only). Password set '
            'by the deployment.';
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- another session created it concurrently
END
$$;

-- Nobody but the owner may create objects in schema public. PostgreSQL 15 already ships this
-- way for new clusters, but databases created from an older template (or upgraded with
-- pg_upgrade) may still grant CREATE to PUBLIC; revoking is idempotent.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
