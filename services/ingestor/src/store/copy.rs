//! Writing rows with binary COPY: the fastest way into PostgreSQL, and no text escaping to get
//! wrong. COPY cannot skip conflicts, so deduplication works around it: ids repeated in a chunk
//! are dropped in memory, as are ids remembered as recently stored (`store::recent_ids`); ids
//! already stored otherwise (by any earlier file or transaction, or earlier in this one) are
//! caught by the primary key and then filtered out with one indexed lookup.

use std::collections::HashSet;

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use event_contract::Event;
use futures_util::{pin_mut, SinkExt};
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::pool::has_sqlstate;
use super::recent_ids::{CommittedIds, IdHashing, RecentIds};
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
/// The binary COPY format's header: signature, flags (none) and header extension length (0).
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY trailer: a field count of -1.
const COPY_TRAILER: i16 = -1;
/// Encoded rows are handed to the connection in pieces of about this size. tokio-postgres's
/// `BinaryCopyInWriter` sends (and flushes) every 4 KiB, about 50 rows: a channel send, a wake-up
/// of the connection task and a socket write each. One piece per 64 KiB makes that 16 times
/// rarer.
const COPY_SEND_BYTES: usize = 64 * 1024;
/// 2000-01-01T00:00:00Z, PostgreSQL's epoch for timestamps, in microseconds since 1970.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The largest `events` row but for its `event_type` text: the field count, eight length
/// words, a uuid, four 8-byte integers and a numeric of at most 8 base-10000 digits.
const MAX_EVENT_ROW_BYTES: usize = 2 + 8 * 4 + 16 + 4 * 8 + (8 + 8 * 2);

/// Appends one `events` row in the binary COPY format, in `COPY_EVENTS`' column order.
///
/// Written by hand rather than through `ToSql` and `BinaryCopyInWriter`: the generic path
/// checks every value's type against its column on every row, and encodes each price through a
/// heap-allocated digit vector. The bytes are the same (`rows_encode_as_tokio_postgres_does`
/// compares them with `ToSql`'s).
fn encode_event(buf: &mut BytesMut, event: &Event, file_id: i64, line: u64) -> anyhow::Result<()> {
    // As tokio-postgres encodes a `DateTime<Utc>`: microseconds since PostgreSQL's epoch.
    let micros = event
        .event_timestamp
        .as_utc()
        .timestamp_micros()
        .checked_sub(POSTGRES_EPOCH_MICROS)
        .context("event timestamp out of PostgreSQL's range")?;
    let event_type = event.event_type.as_str().as_bytes();
    buf.reserve(MAX_EVENT_ROW_BYTES + event_type.len());
    // The fixed-size fields are assembled on the stack and appended at once: each `put_*` of
    // `BytesMut` checks and grows its capacity on its own.
    let mut head = [0u8; 2 + (4 + 16) + 2 * (4 + 8)];
    head[..2].copy_from_slice(&(EVENT_TYPES.len() as i16).to_be_bytes());
    head[2..6].copy_from_slice(&16i32.to_be_bytes());
    head[6..22].copy_from_slice(event.event_id.as_uuid().as_bytes());
    put_i64_at(&mut head[22..34], event.user_id.get());
    put_i64_at(&mut head[34..46], event.product_id.get());
    buf.put_slice(&head);
    put_bytes(buf, event_type);
    match event.price {
        Some(price) => put_numeric(buf, price.as_decimal()),
        None => buf.put_i32(-1),
    }
    let mut tail = [0u8; 3 * (4 + 8)];
    put_i64_at(&mut tail[0..12], micros);
    put_i64_at(&mut tail[12..24], file_id);
    put_i64_at(&mut tail[24..36], i64::try_from(line).unwrap_or(i64::MAX));
    buf.put_slice(&tail);
    Ok(())
}

/// An 8-byte integer field (its length word, then the value) into `slot`, 12 bytes long.
fn put_i64_at(slot: &mut [u8], value: i64) {
    slot[..4].copy_from_slice(&8i32.to_be_bytes());
    slot[4..12].copy_from_slice(&value.to_be_bytes());
}

fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    // Every value written here is a few bytes long (a uuid, an event type).
    buf.put_i32(bytes.len() as i32);
    buf.put_slice(bytes);
}

/// A `Decimal` as PostgreSQL's binary `numeric`, byte for byte as `rust_decimal`'s `ToSql`
/// writes it (base-10000 digits, weight, sign, display scale; trailing zero digits of the
/// fraction dropped when the number has an integer digit), without its digit vector.
fn put_numeric(buf: &mut BytesMut, value: &Decimal) {
    let (mut digits, mut count, weight, scale) = ([0i16; 8], 0usize, 0i16, 0u16);
    let (weight, scale) = if value.is_zero() {
        (weight, scale)
    } else {
        let scale = value.scale() as u16;
        // 96 bits of mantissa, times at most 1,000: well within a u128.
        let mut mantissa = value.mantissa().unsigned_abs();
        let short = scale % 4;
        if short > 0 {
            mantissa *= 10u128.pow(u32::from(4 - short));
        }
        // Below 2^106 < 10^32: at most 8 base-10000 digits, least significant first. A price
        // fits 64 bits, whose division by a constant is a multiplication; a u128's is a call.
        while mantissa != 0 && count < digits.len() {
            let (rest, digit) = match u64::try_from(mantissa) {
                Ok(small) => (u128::from(small / 10_000), small % 10_000),
                Err(_) => (mantissa / 10_000, (mantissa % 10_000) as u64),
            };
            digits[count] = digit as i16;
            mantissa = rest;
            count += 1;
        }
        digits[..count].reverse();
        let weight = count as i16 - scale.div_ceil(4) as i16 - 1;
        if weight >= 0 {
            let integer_digits = (weight as usize + 1).min(count);
            while count > integer_digits && digits[count - 1] == 0 {
                count -= 1;
            }
        }
        (weight, scale)
    };
    buf.put_i32(8 + 2 * count as i32);
    buf.put_u16(count as u16);
    buf.put_i16(weight);
    buf.put_u16(if value.is_sign_negative() && !value.is_zero() {
        0x4000
    } else {
        0
    });
    buf.put_u16(scale);
    for digit in &digits[..count] {
        buf.put_i16(*digit);
    }
}

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
/// duplicates) or probe first (look up the chunk's ids, COPY only new ones). Probing costs an
/// index lookup per row, as much as a third of the COPY itself, so it is only done while the
/// database keeps finding duplicates the memories did not know; a chunk without any switches
/// back to optimistic.
#[derive(Debug, Default)]
pub struct FileDedup {
    probe_first: bool,
}

/// Ids known to be stored before a chunk is inserted.
#[derive(Debug)]
pub struct KnownIds<'a> {
    /// Stored by this transaction: its released files' and the current file's earlier chunks'
    /// (a file undone to its savepoint forgets its own, see `RecentIds::forget_since`).
    pub transaction: &'a mut RecentIds,
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
/// memory; the chunk's ids are remembered in `known.transaction` once it is stored. The rest is COPYed under a savepoint; if the primary key reports a duplicate, the
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
    known: &mut KnownIds<'_>,
) -> anyhow::Result<ChunkInserted> {
    let total = events.len() as u64;
    let ids: Vec<Uuid> = events.iter().map(|e| *e.event.event_id.as_uuid()).collect();
    let committed = known.committed.stored(ids.iter());
    // When it always holds a whole chunk's ids, the transaction's memory is the chunk's set of
    // ids too: an id is remembered when first met, so its repeats are dropped, and none of this
    // chunk's ids can be pushed out before the chunk ends. Remembered before the COPY, they are
    // still only ever stored ones: a chunk that fails undoes its file
    // (`RecentIds::forget_since`) or its whole transaction, whose memory goes with it.
    let remember_first = known.transaction.holds_at_least() >= events.len();
    let mut in_chunk = HashSet::with_hasher(IdHashing::default());
    if !remember_first {
        in_chunk.reserve(events.len());
    }
    // In place: a chunk without duplicates is not moved at all (`retain` visits every row once,
    // in order, as `committed` was answered).
    let mut batch = events;
    let mut committed = committed.into_iter();
    batch.retain(|e| {
        let id = e.event.event_id.as_uuid();
        let first = if remember_first {
            known.transaction.insert(*id)
        } else {
            in_chunk.insert(*id) && !known.transaction.contains(id)
        };
        let committed = committed.next().unwrap_or(false);
        first && !committed
    });
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
                if !remember_first {
                    for id in ids {
                        known.transaction.insert(id);
                    }
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
    let stored: HashSet<Uuid, IdHashing> = tx
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
        .copy_in::<_, Bytes>(COPY_EVENTS)
        .await
        .context(CopyNotStarted { table: "events" })?;
    pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_SEND_BYTES + MAX_EVENT_ROW_BYTES * 2);
    buf.put_slice(COPY_HEADER);
    for LineEvent { event, line } in events {
        encode_event(&mut buf, event, file_id, *line)?;
        if buf.len() >= COPY_SEND_BYTES {
            sink.send(buf.split().freeze())
                .await
                .context("cannot COPY event rows")?;
            buf.reserve(COPY_SEND_BYTES + MAX_EVENT_ROW_BYTES * 2);
        }
    }
    buf.put_i16(COPY_TRAILER);
    sink.send(buf.freeze())
        .await
        .context("cannot COPY event rows")?;
    sink.finish()
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use event_contract::{
        EventId, EventTimestamp, EventType, Price, ProductId, UserId, ValidationContext,
    };
    use proptest::prelude::*;
    use tokio_postgres::types::IsNull;

    /// A row as `BinaryCopyInWriter` encodes it from the `ToSql` values (what `copy_events`
    /// sent before it encoded rows itself).
    fn through_to_sql(event: &Event, file_id: i64, line: u64) -> Vec<u8> {
        let line = i64::try_from(line).unwrap_or(i64::MAX);
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
        let mut buf = BytesMut::new();
        buf.put_i16(8);
        for (value, ty) in row.iter().zip(&EVENT_TYPES) {
            let start = buf.len();
            buf.put_i32(0);
            let len = match value.to_sql_checked(ty, &mut buf).unwrap() {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(buf.len() - start - 4).unwrap(),
            };
            buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
        buf.to_vec()
    }

    fn event(event_type: &str, price: &str, timestamp: &str) -> Event {
        let ctx = ValidationContext::now();
        let event_type = EventType::parse(event_type).unwrap();
        Event {
            event_id: EventId::parse("d1622521-381b-4710-ab0d-64a546c96238").unwrap(),
            user_id: UserId::parse("500051956").unwrap(),
            product_id: ProductId::parse("9223372036854775807").unwrap(),
            event_type,
            price: (!price.is_empty()).then(|| Price::parse(price).unwrap()),
            event_timestamp: EventTimestamp::parse(timestamp, &ctx).unwrap(),
        }
    }

    #[test]
    fn rows_encode_as_tokio_postgres_does() {
        let prices = [
            "",
            "0",
            "0.00",
            "0.5",
            "0.01",
            "1",
            "10",
            "99.99",
            "100.10",
            "1000",
            "10000.01",
            "999999.99",
            "123456.7",
            "5.00",
            "000120.30",
        ];
        let times = [
            "2026-11-01T00:00:00Z",
            "2026-11-21T12:30:00.123456+01:00",
            "2000-01-01T00:00:00Z",
            "1999-12-31T23:59:59.999999Z",
            "1970-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
        ];
        for (i, price) in prices.iter().enumerate() {
            for time in times {
                let event_type = if price.is_empty() { "view" } else { "purchase" };
                let event = event(event_type, price, time);
                let mut buf = BytesMut::new();
                encode_event(&mut buf, &event, 42, i as u64 + 2).unwrap();
                assert_eq!(
                    buf.to_vec(),
                    through_to_sql(&event, 42, i as u64 + 2),
                    "{price} {time}"
                );
            }
        }
        let mut buf = BytesMut::new();
        let event = event("view", "", times[0]);
        encode_event(&mut buf, &event, i64::MAX, u64::MAX).unwrap();
        assert_eq!(buf.to_vec(), through_to_sql(&event, i64::MAX, u64::MAX));
    }

    fn numeric_through_to_sql(value: Decimal) -> Vec<u8> {
        let mut expected = BytesMut::new();
        value.to_sql(&Type::NUMERIC, &mut expected).unwrap();
        let mut framed = (expected.len() as i32).to_be_bytes().to_vec();
        framed.extend_from_slice(&expected);
        framed
    }

    proptest! {
        #[test]
        fn any_decimal_encodes_as_rust_decimal_does(
            mantissa in any::<i128>(),
            scale in 0u32..=28,
        ) {
            // Decimal's mantissa has 96 bits.
            let value = Decimal::from_i128_with_scale(mantissa >> 32, scale);
            let mut buf = BytesMut::new();
            put_numeric(&mut buf, &value);
            prop_assert_eq!(buf.to_vec(), numeric_through_to_sql(value));
        }

        #[test]
        fn small_decimals_encode_as_rust_decimal_does(
            mantissa in -10_000_000_000i64..10_000_000_000,
            scale in 0u32..=10,
        ) {
            let value = Decimal::new(mantissa, scale);
            let mut buf = BytesMut::new();
            put_numeric(&mut buf, &value);
            prop_assert_eq!(buf.to_vec(), numeric_through_to_sql(value));
        }
    }
}
