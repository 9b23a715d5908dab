-- 010_events.sql: the `events` table, the one place accepted e-commerce events live.
--
-- Why this file exists: the table is the product's system of record. Its constraints repeat the
-- event contract (services/event-contract) so that no code path, including a buggy ingestor or a
-- hand-written INSERT, can store an event the contract would reject.
--
-- Idempotent (IF NOT EXISTS everywhere, COMMENT ON overwrites), so it can be applied twice.
-- Changes to an existing table go into a new, later-numbered script, never into this one.

CREATE TABLE IF NOT EXISTS events (
    -- The producer's id for the event; the primary key is the deduplication key, so a replayed
    -- or overlapping file inserts each event at most once (INSERT ... ON CONFLICT DO NOTHING).
    event_id        uuid        NOT NULL,
    user_id         bigint      NOT NULL,
    product_id      bigint      NOT NULL,
    event_type      text        NOT NULL,
    -- numeric(8,2): exact, at most 6 integer and 2 fraction digits, i.e. at most 999999.99.
    price           numeric(8,2),
    event_timestamp timestamptz NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    -- Lineage: which ledger entry and which line of that file the row came from.
    -- Deliberately NO foreign key to ingest_files(file_id):
    --   * a foreign key costs an index probe into the ledger (and a row lock on the parent) for
    --     every inserted event, on the hottest path of the system;
    --   * the ledger is pruned by retention, while events are kept much longer; with a foreign
    --     key, pruning would either be blocked or (ON DELETE CASCADE) delete the events.
    -- A dangling source_file_id therefore means "loaded by a ledger entry since pruned".
    -- NULL lineage means the row did not come through the ingestor (e.g. a manual \copy of a
    -- contract file, which the benchmark uses as its baseline).
    source_file_id  bigint,
    source_line     bigint,

    CONSTRAINT events_pkey PRIMARY KEY (event_id),
    CONSTRAINT events_user_id_positive CHECK (user_id > 0),
    CONSTRAINT events_product_id_positive CHECK (product_id > 0),
    CONSTRAINT events_event_type_known
        CHECK (event_type IN ('view', 'add_to_cart', 'remove_from_cart', 'purchase')),
    CONSTRAINT events_price_range CHECK (price >= 0 AND price < 1000000),
    CONSTRAINT events_price_required CHECK (price IS NOT NULL OR event_type = 'view')
);

-- Indexes. Every index is paid for on every insert, so each one has to earn its place.
--
-- events_pkey (btree on event_id, created by the PRIMARY KEY above): required for deduplication;
-- ON CONFLICT needs a unique index to arbitrate against.

-- Time-windowed dashboard and analytics queries ("purchases in the last hour", "views per day
-- this month") filter on event_timestamp. Rows arrive roughly in event-time order, so the
-- physical order of the heap follows event_timestamp and a BRIN index (one min/max summary per
-- 32 heap pages) prunes almost as well as a btree while being a few hundred times smaller and
-- nearly free to maintain at ingest. pages_per_range = 32 (default 128) keeps the ranges narrow
-- because producers' clocks and late files blur the order a little. autosummarize lets
-- autovacuum summarize each newly filled range instead of waiting for the next VACUUM, so
-- recent data (what dashboards look at most) is pruned too.
CREATE INDEX IF NOT EXISTS events_event_timestamp_brin
    ON events USING brin (event_timestamp) WITH (pages_per_range = 32, autosummarize = on);

-- "What was loaded recently" (operations, freshness checks, incremental exports) filters on
-- ingested_at, which is strictly in insertion order: the ideal case for BRIN.
CREATE INDEX IF NOT EXISTS events_ingested_at_brin
    ON events USING brin (ingested_at) WITH (pages_per_range = 32, autosummarize = on);

-- Indexes deliberately NOT created:
--   * btree on event_type: only four values, so it is not selective enough for the planner to
--     use for anything but the rarest type, yet it costs every insert. Queries by type are
--     combined with a time window (BRIN) or aggregate over everything anyway.
--   * btree on user_id or on product_id: the dashboards' top-N aggregates ("top products",
--     "most active users") read the whole time window regardless; per-user or per-product
--     lookups are ad hoc. If your workload needs them, add them without blocking ingestion:
--       CREATE INDEX CONCURRENTLY events_user_id_idx ON events (user_id);
--     (CONCURRENTLY cannot run inside a transaction block, so not in these scripts.)
--   * anything on source_file_id / source_line: lineage is for forensics, not hot queries.

COMMENT ON TABLE events IS
    'Accepted e-commerce events, each stored exactly once (deduplicated by event_id). '
    'Append-only: the ingestor may INSERT and SELECT, never UPDATE or DELETE.';
COMMENT ON COLUMN events.event_id IS
    'Producer-assigned UUID of the event; primary key and deduplication key.';
COMMENT ON COLUMN events.user_id IS
    'Id of the user who caused the event; positive 64-bit integer.';
COMMENT ON COLUMN events.product_id IS
    'Id of the product the event is about; positive 64-bit integer.';
COMMENT ON COLUMN events.event_type IS
    'What happened: view, add_to_cart, remove_from_cart or purchase.';
COMMENT ON COLUMN events.price IS
    'Product price at the time of the event, exact, 0 <= price < 1,000,000 with at most 2 '
    'fraction digits; required for every event type except view (NULL when a view has none).';
COMMENT ON COLUMN events.event_timestamp IS
    'When the event happened, according to the producer.';
COMMENT ON COLUMN events.ingested_at IS
    'When the row was inserted (start of the loading transaction, so one file''s rows share it).';
COMMENT ON COLUMN events.source_file_id IS
    'Lineage: ingest_files.file_id of the file the event was loaded from. No foreign key on '
    'purpose (insert cost, ledger retention); may point at a pruned ledger entry. NULL when the '
    'row was not loaded by the ingestor.';
COMMENT ON COLUMN events.source_line IS
    'Lineage: 1-based line number in the source file where the record starts (header is line 1).';

COMMENT ON INDEX events_pkey IS
    'Primary key on event_id: the arbiter of INSERT ... ON CONFLICT DO NOTHING deduplication.';
COMMENT ON INDEX events_event_timestamp_brin IS
    'BRIN for time-windowed dashboard and analytics queries; rows arrive roughly in time order.';
COMMENT ON INDEX events_ingested_at_brin IS
    'BRIN for "what was loaded recently" queries; ingested_at follows insertion order.';
