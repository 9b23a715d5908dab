-- 030_grants.sql: least-privilege access for the roles from 001_roles.sql.
--
-- Why this file exists: the tables are owned by the role that applies these scripts (the
-- administrator), so nobody else can touch them until privileges are granted here, and only
-- the privileges each role needs are granted:
--   * ingestor appends events (INSERT ... ON CONFLICT DO NOTHING needs INSERT, and SELECT for
--     reading back) but can never UPDATE, DELETE or TRUNCATE them, and can create no objects;
--     it fully maintains the ledger (claim, finish, retry, prune).
--   * analyst reads everything and writes nothing; its login grafana_reader runs every
--     statement under a time limit, so a dashboard cannot load the server for long;
--   * postgres_exporter connects, and reads statistics through pg_monitor, never rows.
--
-- GRANT is idempotent, so applying this file twice is harmless. Each GRANT ON DATABASE touches
-- only the row of the current database in pg_database, so applying this file concurrently into
-- different databases of one cluster does not conflict.

-- Both roles may look up objects in schema public (CREATE on it was revoked in 001_roles.sql).
GRANT USAGE ON SCHEMA public TO ingestor, analyst;

-- CONNECT to whatever database these scripts are applied to (its name differs between
-- deployments and tests, and GRANT cannot take an expression, hence dynamic SQL).
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO ingestor, analyst, postgres_exporter',
        current_database());
END
$$;

-- grafana_reader's statement_timeout in this database: a Business panel over a time range too
-- big for the server is cancelled after 10 s (Grafana shows the error on the panel) instead
-- of competing with ingestion until it ends. docs/observability.md ("Business") has each panel's
-- measured cost on 10 million events. Set per database (IN DATABASE), because a role-wide
-- ALTER ROLE from scripts applied concurrently into several databases would update the same
-- catalog row ("tuple concurrently updated"); a per-database setting is that database's own
-- row, and DROP DATABASE removes it. Takes effect at the next login.
DO $$
BEGIN
    EXECUTE format('ALTER ROLE grafana_reader IN DATABASE %I SET statement_timeout = %L',
        current_database(), '10s');
END
$$;

-- ingestor
GRANT SELECT, INSERT ON TABLE events TO ingestor;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE ingest_files, rejected_rows TO ingestor;
-- The identity sequence behind ingest_files.file_id. Inserting through the identity column does
-- not check sequence privileges, but reading it (currval, pg_sequence_last_value, monitoring)
-- does; USAGE and SELECT allow nextval/currval, never setval.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ingestor;

-- analyst
GRANT SELECT ON TABLE events, ingest_files, rejected_rows TO analyst;
