-- 060_pruned_files.sql: what retention keeps of a pruned ledger entry: the file's identity,
-- outcome and line counts, without its name, messages or rejected rows.
--
-- Why this file exists: retention (ledger_retention_days) deletes old ledger entries and, with
-- them, their rejected rows. A file re-delivered after that used to be loaded as new content:
-- its events were duplicates (the events' primary key), but its rejected rows were stored a
-- second time, as if the producer had just sent them. The ingestor moves each pruned entry
-- here in the same statement that deletes it, and treats content found here as already
-- finished, as it treats content still in ingest_files. One row is about 100 bytes per file,
-- against the file's events, which are never pruned.
--
-- Idempotent (IF NOT EXISTS, COMMENT ON overwrites, GRANT), so it can be applied twice.

CREATE TABLE IF NOT EXISTS pruned_files (
    content_hash bytea       NOT NULL,
    size_bytes   bigint      NOT NULL,
    file_id      bigint      NOT NULL,
    status       text        NOT NULL,
    lines        bigint      NOT NULL,
    accepted     bigint      NOT NULL,
    duplicates   bigint      NOT NULL,
    rejected     bigint      NOT NULL,
    committed_at timestamptz,
    pruned_at    timestamptz NOT NULL DEFAULT now(),

    -- The same identity as ingest_files_content_key: looked up when a file is claimed.
    CONSTRAINT pruned_files_pkey PRIMARY KEY (content_hash, size_bytes),
    CONSTRAINT pruned_files_status_known CHECK (status IN ('loaded', 'failed'))
);

COMMENT ON TABLE pruned_files IS
    'Ledger entries removed by retention, reduced to identity, outcome and counts, so that '
    're-delivered content is recognised as already finished (and its rejected rows are not '
    'stored again).';
COMMENT ON COLUMN pruned_files.content_hash IS
    'ingest_files.content_hash of the pruned entry.';
COMMENT ON COLUMN pruned_files.size_bytes IS
    'ingest_files.size_bytes of the pruned entry.';
COMMENT ON COLUMN pruned_files.file_id IS
    'The pruned entry''s ledger id (still events.source_file_id of its events).';
COMMENT ON COLUMN pruned_files.status IS
    'loaded or failed, as the entry was when pruned.';
COMMENT ON COLUMN pruned_files.lines IS
    'Data lines of the file; lines = accepted + duplicates + rejected for a loaded file.';
COMMENT ON COLUMN pruned_files.accepted IS 'Records inserted into events.';
COMMENT ON COLUMN pruned_files.duplicates IS 'Valid records whose event_id was already stored.';
COMMENT ON COLUMN pruned_files.rejected IS 'Records rejected (their rejected_rows were pruned).';
COMMENT ON COLUMN pruned_files.committed_at IS 'When the file was finished.';
COMMENT ON COLUMN pruned_files.pruned_at IS 'When retention removed the ledger entry.';

-- The ingestor inserts here when it prunes, reads here when it claims, and `ingestor replay`
-- deletes a failed entry to try the fixed file again.
GRANT SELECT, INSERT, DELETE ON TABLE pruned_files TO ingestor;
GRANT SELECT ON TABLE pruned_files TO analyst;

INSERT INTO schema_version (version, script) VALUES (60, '060_pruned_files.sql')
ON CONFLICT ON CONSTRAINT schema_version_pkey DO NOTHING;
