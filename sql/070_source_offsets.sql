-- 070_source_offsets.sql: where a log source (Kafka) has loaded up to, kept in the same database
-- and advanced in the same transaction as the rows it loaded.
--
-- Why this file exists: the ingestor's Kafka source (`source = "kafka"`) loads a partition's
-- messages in batches. Each batch commits together with its ledger entry (ingest_files), the
-- offset range it covered (log_ranges) and the partition's next offset (source_offsets). On
-- partition assignment the consumer starts from source_offsets, not from the offsets committed
-- to Kafka (those are only a lag hint for tools such as kafka-consumer-groups.sh). So a crash
-- before COMMIT leaves the partition where it was, and a crash after COMMIT leaves it past the
-- batch: every message is loaded once. docs/architecture.md ("The Kafka source") gives the
-- argument in full.
--
-- Idempotent (IF NOT EXISTS, COMMENT ON overwrites, GRANT), so it can be applied twice.

CREATE TABLE IF NOT EXISTS source_offsets (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text,

    CONSTRAINT source_offsets_pkey PRIMARY KEY (topic, partition),
    CONSTRAINT source_offsets_partition_nonnegative CHECK (partition >= 0),
    CONSTRAINT source_offsets_next_offset_nonnegative CHECK (next_offset >= 0)
);

COMMENT ON TABLE source_offsets IS
    'Per Kafka topic partition, the offset of the next message to load; moved forward in the '
    'transaction that stores the messages before it.';
COMMENT ON COLUMN source_offsets.topic IS 'Kafka topic.';
COMMENT ON COLUMN source_offsets.partition IS 'Partition number within the topic.';
COMMENT ON COLUMN source_offsets.next_offset IS
    'Offset of the first message not yet loaded: where a consumer assigned this partition '
    'starts. Lower it (or delete the row) to replay; the replayed events count as duplicates.';
COMMENT ON COLUMN source_offsets.updated_at IS 'When a batch last moved it.';
COMMENT ON COLUMN source_offsets.updated_by IS 'The ingestor instance (claimed_by) that moved it.';
COMMENT ON INDEX source_offsets_pkey IS
    'One position per topic partition; the row a batch locks while it moves it.';

CREATE TABLE IF NOT EXISTS log_ranges (
    file_id      bigint  NOT NULL,
    topic        text    NOT NULL,
    partition    integer NOT NULL,
    first_offset bigint  NOT NULL,
    next_offset  bigint  NOT NULL,

    CONSTRAINT log_ranges_pkey PRIMARY KEY (file_id),
    CONSTRAINT log_ranges_file_id_fkey
        FOREIGN KEY (file_id) REFERENCES ingest_files (file_id) ON DELETE CASCADE,
    CONSTRAINT log_ranges_nonempty CHECK (next_offset > first_offset)
);

CREATE INDEX IF NOT EXISTS log_ranges_topic_partition_idx
    ON log_ranges (topic, partition, first_offset);

COMMENT ON TABLE log_ranges IS
    'The offset range behind each ledger entry (ingest_files) a log source loaded; its '
    'rejected_rows carry the message offset as line_number.';
COMMENT ON COLUMN log_ranges.file_id IS 'The ledger entry (ingest_files.file_id).';
COMMENT ON COLUMN log_ranges.topic IS 'Kafka topic.';
COMMENT ON COLUMN log_ranges.partition IS 'Partition number within the topic.';
COMMENT ON COLUMN log_ranges.first_offset IS
    'The partition''s position before the batch (source_offsets.next_offset it started from).';
COMMENT ON COLUMN log_ranges.next_offset IS
    'Offset after the batch''s last message (source_offsets.next_offset it left behind); '
    'offsets between may be missing (compaction, transaction markers).';
COMMENT ON INDEX log_ranges_pkey IS 'One range per ledger entry.';
COMMENT ON INDEX log_ranges_topic_partition_idx IS
    'Looks up which ledger entry loaded a partition''s offset.';

GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE source_offsets TO ingestor;
GRANT SELECT, INSERT ON TABLE log_ranges TO ingestor;
GRANT SELECT ON TABLE source_offsets, log_ranges TO analyst;

INSERT INTO schema_version (version, script) VALUES (70, '070_source_offsets.sql')
ON CONFLICT ON CONSTRAINT schema_version_pkey DO NOTHING;
