//! Writing rows with binary COPY: the fastest way into PostgreSQL, and no text escaping to get
//! wrong. COPY cannot skip conflicts, so deduplication works around it: ids repeated in a chunk
//! are dropped in memory, as are ids remembered as recently stored (`store::recent_ids`); ids
//! already stored otherwise (by any earlier file or transaction, or earlier in this one) are
//! caught by the primary key and then filtered out with one indexed lookup.

use std::collections::HashSet;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::pool::has_sqlstate;
use super::recent_ids::{CommittedIds, RecentIds};
use crate::model::{LineEvent, RejectedRow};

const COPY_EVENTS: &str = "COPY events (event_id, user_id, product_id, event_type, price, \
    event_timestamp, source_file_id, source_line) FROM STDIN (FORMAT binary)";
const EVENT_TYPES: [Type; 8] = [
    Type::UUID,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::NUMERIC,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::INT8,
];
const COPY_REJECTIONS: &str =
    "COPY rejected_rows (file_id, line_number, raw_line, reason, message) \
    FROM STDIN (FORMAT binary)";
const REJECTION_TYPES: [Type; 5] = [Type::INT8, Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT];

/// The context of an error from *starting* a COPY (before PostgreSQL entered copy mode): the
/// session that ran it must not be used again, not even to roll back to a savepoint.
///
/// Why: tokio-postgres 0.7.18 (`copy_in::copy_in`) sends the COPY as Bind, Execute **and Sync**,
/// and ends it with CopyDone or CopyFail **and another Sync**. Once copy mode has started the
/// server ignores the first Sync, so a COPY that fails half-way is answered by one
/// ReadyForQuery. But when the COPY fails before it starts (`lock_timeout` while waiting for a
/// table lock, INSERT privilege revoked, a missing column), both Syncs are answered: the second
/// ReadyForQuery is taken as the reply to whatever the session sends next, and every later
/// request reads the reply of the one before ("unexpected message from server", "COMMIT failed;
/// its outcome is unknown", `/readyz` answering 503 from a healthy database). This is
/// rust-postgres issue #789 / pull request #1337, open upstream.
///
/// Reproduced by `database_refusals.rs`: hold `LOCK TABLE events IN ACCESS EXCLUSIVE MODE` in
/// another session while files load with `conflict_wait_ms = 50`, or
/// `REVOKE INSERT ON rejected_rows FROM ingestor`. The stray reply cannot be absorbed (its
/// arrival is not observable through the client), so the workaround is to give the session
/// up: the error propagates out of the transaction, which leaves its pooled connection in
/// doubt, and the pool closes it (see `store::pool::Connection`).
#[derive(Debug)]
pub struct CopyNotStarted {
    /// The table the COPY was for.
    pub table: &'static str,
}

impl std::fmt::Display for CopyNotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot start COPY into {}", self.table)
    }
}

impl CopyNotStarted {
    /// Whether `error` comes from a COPY that failed to start.
    pub fn caused(error: &anyhow::Error) -> bool {
        error.downcast_ref::<CopyNotStarted>().is_some()
    }
}

/// How often a chunk is retried after a unique violation before the transaction gives up (each
/// retry follows another transaction storing one of the chunk's ids concurrently).
const MAX_CHUNK_ATTEMPTS: usize = 5;

/// How a loader deduplicates one file: optimistic (COPY first, let the primary key find
/// duplicates) or probe first (look up the chunk's ids, COPY only new ones), and what it
/// remembers. Probing costs an index lookup per row, as much as a third of the COPY itself, so
/// it is only done while the database keeps finding duplicates the memory did not know; a chunk
/// without any switches back to optimistic.
#[derive(Debug)]
pub struct FileDedup {
    probe_first: bool,
    /// This file's most recent valid ids: stored, or inserted earlier in this transaction.
    file: RecentIds,
}

impl FileDedup {
    /// Dedup state for a new file, remembering up to `capacity` of its ids.
    pub fn new(capacity: usize) -> Self {
        FileDedup {
            probe_first: false,
            file: RecentIds::new(capacity),
        }
    }

    /// The file's remembered ids, for the batch once the file's savepoint is released.
    pub fn into_ids(self) -> RecentIds {
        self.file
    }
}

/// Ids known to be stored before a file starts: those of files loaded earlier in the same
/// transaction, and those this process committed recently.
#[derive(Debug, Clone, Copy)]
pub struct KnownIds<'a> {
    /// Files loaded earlier in this transaction (their savepoints released).
    pub batch: &'a RecentIds,
    /// Committed by this process.
    pub committed: &'a CommittedIds,
}

/// What inserting a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInserted {
    /// Rows written.
    pub accepted: u64,
    /// Rows whose event id was already stored (or repeated).
    pub duplicates: u64,
    /// Whether the chunk's ids were looked up in the database.
    pub looked_up: bool,
}

/// Inserts the chunk's events that are not stored yet.
///
/// Ids repeated inside the chunk, or remembered as stored (see [`RecentIds`]), are dropped in
/// memory. The rest is COPYed under a savepoint; if the primary key reports a duplicate, the
/// chunk is rolled back, its stored ids are looked up (this also sees rows written earlier in
/// the same transaction) and the new ones COPYed.
///
/// # Errors
/// On a database error, or when concurrent writers keep storing the chunk's ids.
pub async fn insert_new(
    tx: &mut Transaction<'_>,
    file_id: i64,
    events: Vec<LineEvent>,
    dedup: &mut FileDedup,
    known: KnownIds<'_>,
) -> anyhow::Result<ChunkInserted> {
    let total = events.len() as u64;
    let ids: Vec<Uuid> = events.iter().map(|e| *e.event.event_id.as_uuid()).collect();
    let committed = known.committed.stored(ids.iter());
    let mut in_chunk = HashSet::with_capacity(events.len());
    let mut batch: Vec<LineEvent> = events
        .into_iter()
        .zip(committed)
        .filter(|(e, committed)| {
            let id = e.event.event_id.as_uuid();
            in_chunk.insert(*id)
                && !committed
                && !dedup.file.contains(id)
                && !known.batch.contains(id)
        })
        .map(|(e, _)| e)
        .collect();
    let unique = batch.len();
    let mut looked_up = dedup.probe_first;
    if looked_up {
        batch = drop_stored(tx, batch).await?;
    }
    for _ in 0..MAX_CHUNK_ATTEMPTS {
        let chunk = tx
            .savepoint("chunk")
            .await
            .context("cannot create a chunk savepoint")?;
        match copy_events(&chunk, file_id, &batch).await {
            Ok(written) => {
                chunk
                    .commit()
                    .await
                    .context("cannot release the chunk savepoint")?;
                dedup.probe_first = batch.len() < unique;
                for id in ids {
                    dedup.file.insert(id);
                }
                return Ok(ChunkInserted {
                    accepted: written,
                    duplicates: total - written,
                    looked_up,
                });
            }
            // A unique violation is raised by a row, so copy mode had started and the session
            // is in step; the guard only documents that a COPY that never started is not this.
            Err(e)
                if has_sqlstate(&e, &SqlState::UNIQUE_VIOLATION) && !CopyNotStarted::caused(&e) =>
            {
                chunk
                    .rollback()
                    .await
                    .context("cannot roll back the chunk savepoint")?;
                dedup.probe_first = true;
                looked_up = true;
                batch = drop_stored(tx, batch).await?;
            }
            Err(e) => return Err(e),
        }
    }
    anyhow::bail!(
        "event ids of a chunk kept being stored concurrently; the transaction will be retried"
    )
}

/// Drops events whose id is already stored.
async fn drop_stored(
    tx: &Transaction<'_>,
    events: Vec<LineEvent>,
) -> anyhow::Result<Vec<LineEvent>> {
    let ids: Vec<Uuid> = events.iter().map(|e| *e.event.event_id.as_uuid()).collect();
    // The loading transaction pins this lookup to the primary key (see
    // `pipeline::loader::LOADING_SETTINGS`).
    let stored: HashSet<Uuid> = tx
        .query(
            "SELECT event_id FROM events WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await
        .context("cannot look up existing event ids")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(events
        .into_iter()
        .filter(|e| !stored.contains(e.event.event_id.as_uuid()))
        .collect())
}

/// COPYs events into `events`; returns the number written.
///
/// # Errors
/// On a database error, e.g. a unique violation when another transaction stored the same id
/// concurrently (the caller retries the transaction).
pub async fn copy_events(
    tx: &Transaction<'_>,
    file_id: i64,
    events: &[LineEvent],
) -> anyhow::Result<u64> {
    if events.is_empty() {
        return Ok(0);
    }
    let sink = tx
        .copy_in(COPY_EVENTS)
        .await
        .context(CopyNotStarted { table: "events" })?;
    let writer = BinaryCopyInWriter::new(sink, &EVENT_TYPES);
    pin_mut!(writer);
    for LineEvent { event, line } in events {
        let line = i64::try_from(*line).unwrap_or(i64::MAX);
        let price = event.price.map(|p| *p.as_decimal());
        let timestamp: &DateTime<Utc> = event.event_timestamp.as_utc();
        let row: [&(dyn ToSql + Sync); 8] = [
            event.event_id.as_uuid(),
            &event.user_id.get(),
            &event.product_id.get(),
            &event.event_type.as_str(),
            &price,
            timestamp,
            &file_id,
            &line,
        ];
        writer
            .as_mut()
            .write(&row)
            .await
            .context("cannot COPY an event row")?;
    }
    writer
        .finish()
        .await
        .context("cannot finish COPY into events")
}

/// COPYs rejected rows into `rejected_rows`; returns the number written.
///
/// # Errors
/// On a database error.
pub async fn copy_rejections(
    tx: &Transaction<'_>,
    file_id: i64,
    rows: &[RejectedRow],
) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sink = tx.copy_in(COPY_REJECTIONS).await.context(CopyNotStarted {
        table: "rejected_rows",
    })?;
    let writer = BinaryCopyInWriter::new(sink, &REJECTION_TYPES);
    pin_mut!(writer);
    for row in rows {
        let line = i64::try_from(row.line).unwrap_or(i64::MAX);
        let values: [&(dyn ToSql + Sync); 5] =
            [&file_id, &line, &row.raw, &row.reason.code(), &row.message];
        writer
            .as_mut()
            .write(&values)
            .await
            .context("cannot COPY a rejected row")?;
    }
    writer
        .finish()
        .await
        .context("cannot finish COPY into rejected_rows")
}
