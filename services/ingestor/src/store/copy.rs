//! Writing rows with binary COPY: the fastest way into PostgreSQL, and no text escaping to get
//! wrong. Deduplication happens before the COPY (COPY cannot skip conflicts): ids repeated in
//! the chunk are dropped in memory, ids already stored (by any earlier file or transaction, or
//! earlier in this one) are found with one indexed lookup per chunk.

use std::collections::HashSet;

use anyhow::Context;
use chrono::{DateTime, Utc};
use event_contract::{Event, RejectReason};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

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

/// A row that broke the contract, ready for `rejected_rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    /// 1-based line where the record starts.
    pub line: u64,
    /// The raw text, valid UTF-8 without NUL bytes (what a `text` column can hold).
    pub raw: String,
    /// Why.
    pub reason: RejectReason,
    /// Explanation.
    pub message: String,
}

/// A valid event and the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineEvent {
    /// The event.
    pub event: Event,
    /// 1-based line where the record starts.
    pub line: u64,
}

/// Drops events whose id is already stored or repeated earlier in `events`; returns the new ones.
///
/// # Errors
/// On a database error.
pub async fn keep_new(
    tx: &Transaction<'_>,
    events: Vec<LineEvent>,
) -> anyhow::Result<Vec<LineEvent>> {
    let mut seen = HashSet::with_capacity(events.len());
    let unique: Vec<LineEvent> = events
        .into_iter()
        .filter(|e| seen.insert(*e.event.event_id.as_uuid()))
        .collect();
    let ids: Vec<Uuid> = unique.iter().map(|e| *e.event.event_id.as_uuid()).collect();
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
    Ok(unique
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
        .context("cannot start COPY into events")?;
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
    let sink = tx
        .copy_in(COPY_REJECTIONS)
        .await
        .context("cannot start COPY into rejected_rows")?;
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
