-- 020_ledger.sql: the ingestion ledger (first shape): which files were seen, what became of
-- them, and the rows that were rejected.
--
-- Why this file exists: "exactly once" needs a durable record of every file the ingestor has
-- claimed, keyed by the file's content rather than its name, written in the same transaction
-- as the file's events. A file whose content is already in the ledger is not loaded again,
-- whatever it is called now; a crash mid-load rolls back the events and the ledger together.
--
-- Idempotent (IF NOT EXISTS everywhere, COMMENT ON overwrites), so it can be applied twice.
-- Later changes to these tables go into new, later-numbered scripts.

CREATE TABLE IF NOT EXISTS ingest_files (
    file_id         bigint      GENERATED ALWAYS AS IDENTITY,
    file_name       text        NOT NULL,
    size_bytes      bigint      NOT NULL,
    content_hash    bytea       NOT NULL,
    status          text        NOT NULL,
    lines           bigint      NOT NULL DEFAULT 0,
    accepted        bigint      NOT NULL DEFAULT 0,
    duplicates      bigint      NOT NULL DEFAULT 0,
    rejected        bigint      NOT NULL DEFAULT 0,
    failure_reason  text,
    failure_message text,
    claimed_by      text,
    landed_at       timestamptz,
    discovered_at   timestamptz NOT NULL DEFAULT now(),
    committed_at    timestamptz,

    CONSTRAINT ingest_files_pkey PRIMARY KEY (file_id),
    -- The file's identity: a fast (non-cryptographic is fine) hash of the content together with
    -- the size, which makes an accidental collision even less likely. Names are not identity:
    -- producers may re-deliver a file under a new name. The unique index behind this
    -- constraint is also how the ingestor looks a file up before claiming it, and what makes
    -- two ingestors racing for the same file safe (one of the INSERTs fails or does nothing).
    CONSTRAINT ingest_files_content_key UNIQUE (content_hash, size_bytes),
    CONSTRAINT ingest_files_size_nonnegative CHECK (size_bytes >= 0),
    CONSTRAINT ingest_files_status_known CHECK (status IN ('loading', 'loaded', 'failed')),
    CONSTRAINT ingest_files_counts_nonnegative
        CHECK (lines >= 0 AND accepted >= 0 AND duplicates >= 0 AND rejected >= 0),
    -- Every data line of a loaded file is accounted for exactly once.
    CONSTRAINT ingest_files_loaded_counts_add_up
        CHECK (status <> 'loaded' OR lines = accepted + duplicates + rejected)
);

-- Retention pruning ("DELETE FROM ingest_files WHERE status IN ('loaded', 'failed') AND
-- committed_at < now() - interval '...'") and status queries (files stuck in 'loading' after a
-- crash, recent failures for an operator, the most recently committed file for a freshness
-- check) all filter on status first and then on, or order by, committed_at. The table has one
-- row per file, so this btree is cheap to maintain.
CREATE INDEX IF NOT EXISTS ingest_files_status_committed_at_idx
    ON ingest_files (status, committed_at);

COMMENT ON TABLE ingest_files IS
    'Ingestion ledger: one row per distinct file content the ingestor has claimed, with its '
    'outcome and line counts. Pruned by retention; rejected_rows entries go with it (CASCADE).';
COMMENT ON COLUMN ingest_files.file_id IS
    'Surrogate key, generated; referenced by rejected_rows and (without a foreign key) by '
    'events.source_file_id.';
COMMENT ON COLUMN ingest_files.file_name IS
    'Name of the file when it was claimed; for people only, not part of the file''s identity.';
COMMENT ON COLUMN ingest_files.size_bytes IS
    'Size of the file in bytes; part of the file''s identity together with content_hash.';
COMMENT ON COLUMN ingest_files.content_hash IS
    'Fast hash of the whole file content; (content_hash, size_bytes) identifies the file.';
COMMENT ON COLUMN ingest_files.status IS
    'loading: exists only inside the loading transaction (the claim), so other sessions never '
    'see it; loaded: committed with its rows; failed: the file as a whole could not be loaded '
    '(see failure_reason).';
COMMENT ON COLUMN ingest_files.lines IS
    'Number of data lines (records) in the file, header excluded.';
COMMENT ON COLUMN ingest_files.accepted IS
    'Records inserted into events.';
COMMENT ON COLUMN ingest_files.duplicates IS
    'Valid records not inserted because their event_id was already in events.';
COMMENT ON COLUMN ingest_files.rejected IS
    'Records that break the event contract; each one has a row in rejected_rows.';
COMMENT ON COLUMN ingest_files.failure_reason IS
    'Stable machine-readable code why the whole file failed (status failed), '
    'e.g. header_missing_column.';
COMMENT ON COLUMN ingest_files.failure_message IS
    'Human-readable details of the failure; wording may change, do not match on it.';
COMMENT ON COLUMN ingest_files.claimed_by IS
    'Identity of the ingestor instance that loaded the file (host:pid, or INGESTOR_INSTANCE_ID), '
    'to see how replicas shared the work.';
COMMENT ON COLUMN ingest_files.landed_at IS
    'When the file landed in the input directory (its modification time); committed_at - '
    'landed_at is the file''s landing-to-commit latency.';
COMMENT ON COLUMN ingest_files.discovered_at IS
    'When the ingestor claimed the file (row creation time).';
COMMENT ON COLUMN ingest_files.committed_at IS
    'When the file reached a final status (loaded or failed); NULL while loading.';
COMMENT ON INDEX ingest_files_pkey IS
    'Primary key on file_id.';
COMMENT ON INDEX ingest_files_content_key IS
    'File identity (content_hash, size_bytes): lookup before claiming, guard against loading '
    'the same content twice.';
COMMENT ON INDEX ingest_files_status_committed_at_idx IS
    'Retention pruning and status queries: filter by status, then by committed_at.';

CREATE TABLE IF NOT EXISTS rejected_rows (
    file_id     bigint      NOT NULL,
    line_number bigint      NOT NULL,
    raw_line    text        NOT NULL,
    reason      text        NOT NULL,
    message     text        NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now(),

    -- The primary key leads with file_id, so it also serves the foreign key: deleting a ledger
    -- row (retention) finds its rejected rows through this index, no separate index needed.
    CONSTRAINT rejected_rows_pkey PRIMARY KEY (file_id, line_number),
    CONSTRAINT rejected_rows_file_id_fkey
        FOREIGN KEY (file_id) REFERENCES ingest_files (file_id) ON DELETE CASCADE
);

-- Indexes deliberately NOT created:
--   * on reason: there are only a handful of reason codes, so it is not selective; queries by
--     reason are either per file (served by the primary key) or aggregates over the whole
--     table ("rejections per reason this week"), which scan anyway. Rejections are meant to be
--     rare, so the table stays small.
--   * on rejected_at: retention goes through ingest_files and ON DELETE CASCADE, not by date.

COMMENT ON TABLE rejected_rows IS
    'Records of ingested files that broke the event contract, kept for operators to inspect '
    'and fix. Deleted with their ingest_files row.';
COMMENT ON COLUMN rejected_rows.file_id IS
    'The ledger entry (ingest_files.file_id) of the file the record came from.';
COMMENT ON COLUMN rejected_rows.line_number IS
    '1-based line number in the file where the record starts (the header is line 1).';
COMMENT ON COLUMN rejected_rows.raw_line IS
    'The record as it appeared in the file. Invalid UTF-8 is stored lossily (each bad sequence '
    'replaced by U+FFFD) and NUL bytes are removed, because text cannot hold them.';
COMMENT ON COLUMN rejected_rows.reason IS
    'Stable machine-readable reason code from the event contract, e.g. bad_price; safe to '
    'match on and to group by.';
COMMENT ON COLUMN rejected_rows.message IS
    'Human-readable explanation of the rejection; wording may change, do not match on it.';
COMMENT ON COLUMN rejected_rows.rejected_at IS
    'When the rejection was recorded (start of the loading transaction).';
COMMENT ON INDEX rejected_rows_pkey IS
    'One rejection per file line; leads with file_id, so it also serves the ON DELETE CASCADE '
    'from ingest_files.';
COMMENT ON CONSTRAINT rejected_rows_file_id_fkey ON rejected_rows IS
    'Rejected rows belong to their ledger entry and are pruned with it.';
