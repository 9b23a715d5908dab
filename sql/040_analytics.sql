-- 040_analytics.sql: the analytics analysts query, as views over `events` and `rejected_rows`,
-- readable by the read-only `analyst` role. The Business dashboard reads
-- analytics_rejections_by_reason; its other panels aggregate `events` directly, filtered on
-- event_timestamp, so that a range counts exactly its own events (a filter on a view's hour or
-- minute bucket keeps or drops whole buckets at the range's edges). They bucket minutes with the
-- same UTC expression as below, whose BRIN index gives the planner the number of minutes.
--
-- Why plain views and not materialized views: the cost of a view is paid by whoever queries it,
-- when they query it, and nothing is added to the ingest path. A materialized view would need a
-- REFRESH (a full recomputation that competes with ingestion for I/O, and takes an exclusive
-- lock unless CONCURRENTLY, which in turn needs a unique index and a second full pass), would be
-- stale between refreshes, and would need a scheduler this stack does not have. The data is
-- append-only and dashboards look at recent time windows, so computing on read is cheap enough
-- as long as the time window is served by an index (next paragraph). If a dashboard ever needs
-- the whole history at interactive speed, add a rollup table maintained off the ingest path;
-- do not turn these views into materialized ones.
--
-- Which index serves time-windowed queries: queries on `events` filtered by event_timestamp
-- ("WHERE event_timestamp >= now() - interval '1 hour'") use the BRIN events_event_timestamp_brin
-- from 010_events.sql. The per-minute and per-hour views, however, group by a truncated time,
-- and a filter on the view's minute/hour column is pushed down into the scan as a filter on the
-- truncation expression, which an index on the bare column cannot serve. The two BRIN
-- expression indexes below index exactly those expressions, so
--     SELECT * FROM analytics_revenue_per_minute WHERE minute >= now() - interval '1 hour'
-- reads only the block ranges of the last hour. They have the same physical correlation as
-- event_timestamp (rows arrive roughly in time order), and like every BRIN they cost next to
-- nothing per insert: a new row lands in a not yet summarized range, which autovacuum
-- summarizes later (autosummarize). The bucket is computed in UTC with immutable functions
-- (date_trunc on timestamptz depends on the session's TimeZone, so it could not be indexed and
-- an hour bucket would differ between sessions in zones with a fractional offset).
--
-- Creating an index takes a SHARE lock on `events`, which blocks ingestion while it is built
-- (fast for BRIN, one sequential scan). On a large existing database, build them first without
-- blocking, outside a transaction, with the same names; IF NOT EXISTS below then skips them:
--   CREATE INDEX CONCURRENTLY events_event_minute_utc_brin ON events USING brin
--       ((date_trunc('minute', event_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))
--       WITH (pages_per_range = 32, autosummarize = on);
--   (and likewise events_event_hour_utc_brin with 'hour')
--
-- Plain SQL, idempotent (CREATE OR REPLACE VIEW with unchanged columns, IF NOT EXISTS, COMMENT
-- ON and GRANT overwrite), safe to apply twice and concurrently into different databases: every
-- object here is local to the current database. A change to a view's columns other than
-- appending new ones at the end needs DROP VIEW in a later script (CREATE OR REPLACE cannot
-- rename, retype or remove columns).

CREATE INDEX IF NOT EXISTS events_event_minute_utc_brin
    ON events USING brin ((date_trunc('minute', event_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))
    WITH (pages_per_range = 32, autosummarize = on);

CREATE INDEX IF NOT EXISTS events_event_hour_utc_brin
    ON events USING brin ((date_trunc('hour', event_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))
    WITH (pages_per_range = 32, autosummarize = on);

COMMENT ON INDEX events_event_minute_utc_brin IS
    'BRIN on the UTC minute of event_timestamp: serves time filters on the minute column of '
    'analytics_events_per_minute and analytics_revenue_per_minute.';
COMMENT ON INDEX events_event_hour_utc_brin IS
    'BRIN on the UTC hour of event_timestamp: serves time filters on the hour column of '
    'analytics_funnel_by_hour.';

CREATE OR REPLACE VIEW analytics_events_per_minute AS
SELECT
    date_trunc('minute', event_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS minute,
    event_type,
    count(*) AS events
FROM events
GROUP BY 1, 2;

COMMENT ON VIEW analytics_events_per_minute IS
    'How many events of each type happened per minute (UTC minute of event_timestamp)? '
    'Filter on minute to stay within a time window (served by events_event_minute_utc_brin).';

CREATE OR REPLACE VIEW analytics_revenue_per_minute AS
SELECT
    date_trunc('minute', event_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS minute,
    count(*) AS purchases,
    sum(price) AS revenue
FROM events
WHERE event_type = 'purchase'
GROUP BY 1;

COMMENT ON VIEW analytics_revenue_per_minute IS
    'How many purchases, and how much revenue (exact sum of purchase prices), per minute? '
    'Minutes without purchases have no row. Filter on minute to stay within a time window.';

CREATE OR REPLACE VIEW analytics_funnel_by_hour AS
SELECT
    hour,
    views,
    carts,
    removals,
    purchases,
    round(carts::numeric / NULLIF(views, 0), 4) AS view_to_cart,
    round(purchases::numeric / NULLIF(carts, 0), 4) AS cart_to_purchase
FROM (
    SELECT
        date_trunc('hour', event_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
        count(*) FILTER (WHERE event_type = 'view') AS views,
        count(*) FILTER (WHERE event_type = 'add_to_cart') AS carts,
        count(*) FILTER (WHERE event_type = 'remove_from_cart') AS removals,
        count(*) FILTER (WHERE event_type = 'purchase') AS purchases
    FROM events
    GROUP BY 1
) AS per_hour;

COMMENT ON VIEW analytics_funnel_by_hour IS
    'How do views turn into carts and carts into purchases, hour by hour (UTC)? Ratios are '
    'rounded to 4 digits and NULL when their denominator is 0. Events are counted '
    'independently per hour, not followed per user. Filter on hour to stay within a time window.';

CREATE OR REPLACE VIEW analytics_top_products AS
SELECT
    product_id,
    count(*) FILTER (WHERE event_type = 'view') AS views,
    count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
    coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0.00) AS revenue
FROM events
GROUP BY product_id;

COMMENT ON VIEW analytics_top_products IS
    'Which products are viewed and bought most, and which bring the most revenue? One row per '
    'product; ORDER BY revenue DESC (or views, purchases) LIMIT n for a top list.';

CREATE OR REPLACE VIEW analytics_rejections_by_reason AS
SELECT
    reason,
    count(*) AS rows,
    count(DISTINCT file_id) AS files,
    max(rejected_at) AS last_seen
FROM rejected_rows
GROUP BY reason;

COMMENT ON VIEW analytics_rejections_by_reason IS
    'Why are producers'' rows rejected, how often, in how many files, and when last? Covers the '
    'ledger''s retention window only (rejected rows are pruned with their file''s entry).';

-- Views are executed with their owner's privileges on the underlying tables, so SELECT on the
-- view is all a reader needs. The ingestor gets none: it reads the base tables it already may
-- read (`ingestor report`), and it has no business with dashboards.
GRANT SELECT ON TABLE
    analytics_events_per_minute,
    analytics_revenue_per_minute,
    analytics_funnel_by_hour,
    analytics_top_products,
    analytics_rejections_by_reason
TO analyst;
