-- 050_schema_version.sql: which of these scripts a database has had applied, so the ingestor
-- (`ingestor check`) can tell a schema that is too old from one that is merely wrong.
--
-- Why a table and not a number in a comment: the scripts are applied by hand, by the postgres
-- image's entrypoint and by the tests, and only the database itself can say what it received.
-- The version is the number at the start of a script's file name; each script from this one on
-- records its own number as its last statement, and the ingestor needs the highest one it was
-- built with (`SCHEMA_VERSION` in services/ingestor/src/commands/check.rs). A script added
-- later must do the same and raise that constant. The scripts before this one are recorded
-- here, since this table did not exist when they ran.
--
-- Idempotent (IF NOT EXISTS, ON CONFLICT DO NOTHING), so it can be applied twice.

CREATE TABLE IF NOT EXISTS schema_version (
    version     integer     NOT NULL,
    script      text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT schema_version_pkey PRIMARY KEY (version)
);

COMMENT ON TABLE schema_version IS
    'One row per script of sql/ applied to this database; max(version) is the schema version.';
COMMENT ON COLUMN schema_version.version IS
    'The number at the start of the script''s file name (050 for 050_schema_version.sql).';
COMMENT ON COLUMN schema_version.script IS
    'The script''s file name.';
COMMENT ON COLUMN schema_version.applied_at IS
    'When the script was first applied.';

GRANT SELECT ON TABLE schema_version TO ingestor, analyst;

INSERT INTO schema_version (version, script) VALUES
    (1, '001_roles.sql'),
    (10, '010_events.sql'),
    (20, '020_ledger.sql'),
    (30, '030_grants.sql'),
    (40, '040_analytics.sql'),
    (50, '050_schema_version.sql')
ON CONFLICT ON CONSTRAINT schema_version_pkey DO NOTHING;
