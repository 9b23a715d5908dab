//! A log source's positions in PostgreSQL (`sql/070_source_offsets.sql`): where each topic
//! partition's next unloaded message is, moved forward inside the loading transaction together
//! with the rows, and the offset range behind each ledger entry. This table, not the offsets
//! committed to Kafka, is where a consumer starts: that is what makes a crash before or after
//! COMMIT load every message once.

use std::collections::HashMap;

use anyhow::Context;
use tokio_postgres::{Client, GenericClient, Transaction};

/// The outcome of moving a partition's position forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// The position was where the range starts and now is where it ends.
    Advanced,
    /// The position is elsewhere (another consumer loaded on, or an operator moved it back to
    /// replay): the range must not be loaded; reading resumes from `stored`.
    OutOfStep {
        /// The stored position.
        stored: i64,
    },
}

/// One partition's stored position, for `ingestor status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredPosition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset of the next message to load.
    pub next_offset: i64,
    /// When a batch last moved it (RFC 3339).
    pub updated_at: String,
    /// The instance that moved it.
    pub updated_by: Option<String>,
}

/// The stored positions of `partitions` of `topic`; partitions never loaded are absent.
///
/// # Errors
/// On a database error.
pub async fn stored_positions(
    client: &impl GenericClient,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<HashMap<i32, i64>> {
    let rows = client
        .query(
            "SELECT partition, next_offset FROM source_offsets \
             WHERE topic = $1 AND partition = ANY($2)",
            &[&topic, &partitions],
        )
        .await
        .context("cannot read the stored Kafka offsets (source_offsets)")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Moves `topic`/`partition` from `from` to `next` in `tx`, only if it is at `from` (a
/// partition never loaded starts wherever its first range starts). The row stays locked until
/// the transaction ends, so a second consumer of the same partition waits, then finds it moved.
///
/// # Errors
/// On a database error (including a lock wait over `lock_timeout`).
pub async fn advance(
    tx: &Transaction<'_>,
    topic: &str,
    partition: i32,
    from: i64,
    next: i64,
    instance: &str,
) -> anyhow::Result<Advance> {
    let moved = tx
        .query_opt(
            "INSERT INTO source_offsets (topic, partition, next_offset, updated_by) \
             VALUES ($1, $2, $4, $5) \
             ON CONFLICT ON CONSTRAINT source_offsets_pkey DO UPDATE \
             SET next_offset = EXCLUDED.next_offset, updated_at = now(), \
                 updated_by = EXCLUDED.updated_by \
             WHERE source_offsets.next_offset = $3 \
             RETURNING next_offset",
            &[&topic, &partition, &from, &next, &instance],
        )
        .await
        .context("cannot move the partition's stored offset (source_offsets)")?;
    if moved.is_some() {
        return Ok(Advance::Advanced);
    }
    let stored: i64 = tx
        .query_one(
            "SELECT next_offset FROM source_offsets WHERE topic = $1 AND partition = $2",
            &[&topic, &partition],
        )
        .await
        .context("cannot read the partition's stored offset (source_offsets)")?
        .get(0);
    Ok(Advance::OutOfStep { stored })
}

/// Records which offsets ledger entry `file_id` covers.
///
/// # Errors
/// On a database error.
pub async fn record_range(
    tx: &Transaction<'_>,
    file_id: i64,
    topic: &str,
    partition: i32,
    first: i64,
    next: i64,
) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO log_ranges (file_id, topic, partition, first_offset, next_offset) \
         VALUES ($1, $2, $3, $4, $5)",
        &[&file_id, &topic, &partition, &first, &next],
    )
    .await
    .context("cannot record the batch's offset range (log_ranges)")?;
    Ok(())
}

/// Every stored position, by topic and partition.
///
/// # Errors
/// On a database error.
pub async fn all_positions(client: &Client) -> anyhow::Result<Vec<StoredPosition>> {
    let rows = client
        .query(
            "SELECT topic, partition, next_offset, \
             to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             updated_by FROM source_offsets ORDER BY topic, partition",
            &[],
        )
        .await
        .context("cannot read the stored Kafka offsets (source_offsets)")?;
    Ok(rows
        .iter()
        .map(|r| StoredPosition {
            topic: r.get(0),
            partition: r.get(1),
            next_offset: r.get(2),
            updated_at: r.get(3),
            updated_by: r.get(4),
        })
        .collect())
}
