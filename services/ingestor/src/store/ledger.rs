//! The ingestion ledger: one row per distinct file content. Claiming a file and finishing it
//! happen in the loading transaction, so the ledger can never say "loaded" for rows that are
//! not there, nor miss rows that are.

use anyhow::Context;
use tokio_postgres::Transaction;

use crate::model::{FileFailure, FileIdentity, LedgerStatus, LineCounts};

/// What claiming a file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This transaction owns the file: a new ledger row in state `loading`.
    Claimed {
        /// The new ledger id.
        file_id: i64,
    },
    /// Another transaction (another replica) is loading the same content right now.
    Busy,
    /// The content is already in the ledger, finished.
    Known {
        /// The existing ledger id.
        file_id: i64,
        /// `Loaded` or `Failed`.
        status: LedgerStatus,
    },
}

/// Claims a file by content: a transaction-level advisory lock keyed by the content hash (so
/// replicas never wait on each other, and the lock cannot leak across pooled connections: it
/// ends with the transaction), then a ledger row unless the content is known.
///
/// # Errors
/// On a database error.
pub async fn claim(
    tx: &Transaction<'_>,
    identity: &FileIdentity,
    name: &str,
    landed_at: std::time::SystemTime,
    instance: &str,
) -> anyhow::Result<Claim> {
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[&identity.lock_key()],
        )
        .await
        .context("cannot take the file's advisory lock")?
        .get(0);
    if !locked {
        return Ok(Claim::Busy);
    }
    let size = i64::try_from(identity.size).context("file size exceeds bigint")?;
    // Content whose entry retention pruned is finished too (sql/060_pruned_files.sql): loaded
    // again, its events would be duplicates but its rejected rows would be stored twice.
    let inserted = tx
        .query_opt(
            "INSERT INTO ingest_files (file_name, size_bytes, content_hash, status, claimed_by, landed_at) \
             SELECT $1::text, $2::bigint, $3::bytea, $6::text, $4::text, $5::timestamptz \
             WHERE NOT EXISTS (SELECT FROM pruned_files WHERE content_hash = $3 AND size_bytes = $2) \
             ON CONFLICT ON CONSTRAINT ingest_files_content_key DO NOTHING RETURNING file_id",
            &[
                &name,
                &size,
                &identity.hash.as_slice(),
                &instance,
                &landed_at,
                &LedgerStatus::Loading,
            ],
        )
        .await
        .context("cannot insert the ledger entry")?;
    if let Some(row) = inserted {
        return Ok(Claim::Claimed {
            file_id: row.get(0),
        });
    }
    let row = tx
        .query_one(
            "SELECT file_id, status FROM ingest_files WHERE content_hash = $1 AND size_bytes = $2 \
             UNION ALL \
             SELECT file_id, status FROM pruned_files WHERE content_hash = $1 AND size_bytes = $2 \
             LIMIT 1",
            &[&identity.hash.as_slice(), &size],
        )
        .await
        .context("cannot read the existing ledger entry")?;
    Ok(Claim::Known {
        file_id: row.get(0),
        status: row.get(1),
    })
}

/// Marks a claimed file loaded with its line accounting.
///
/// # Errors
/// On a database error (including the ledger's check that the counts add up).
pub async fn finish_loaded(
    tx: &Transaction<'_>,
    file_id: i64,
    counts: &LineCounts,
) -> anyhow::Result<()> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE ingest_files SET status = $6, lines = $2, accepted = $3, duplicates = $4, \
         rejected = $5, committed_at = clock_timestamp() WHERE file_id = $1",
        &[
            &file_id,
            &n(counts.lines),
            &n(counts.accepted),
            &n(counts.duplicates),
            &n(counts.rejected),
            &LedgerStatus::Loaded,
        ],
    )
    .await
    .context("cannot finish the ledger entry")?;
    Ok(())
}

/// Records a file that cannot be loaded as a whole. Inserts the ledger row if the claim was
/// rolled back (error budget), updates it otherwise. `landed_at` is stored as for a loaded
/// file, so a failed file's landing-to-failure latency and age can be read from the ledger too;
/// an entry that already has one keeps it (the claim's).
///
/// # Errors
/// On a database error.
pub async fn record_failed(
    tx: &Transaction<'_>,
    identity: &FileIdentity,
    name: &str,
    landed_at: std::time::SystemTime,
    instance: &str,
    failure: &FileFailure,
) -> anyhow::Result<i64> {
    let size = i64::try_from(identity.size).context("file size exceeds bigint")?;
    let row = tx
        .query_one(
            "INSERT INTO ingest_files (file_name, size_bytes, content_hash, status, claimed_by, \
             failure_reason, failure_message, landed_at, committed_at) \
             VALUES ($1, $2, $3, $8, $4, $5, $6, $7, clock_timestamp()) \
             ON CONFLICT ON CONSTRAINT ingest_files_content_key DO UPDATE SET status = $8, \
             failure_reason = EXCLUDED.failure_reason, failure_message = EXCLUDED.failure_message, \
             landed_at = COALESCE(ingest_files.landed_at, EXCLUDED.landed_at), \
             committed_at = EXCLUDED.committed_at RETURNING file_id",
            &[
                &name,
                &size,
                &identity.hash.as_slice(),
                &instance,
                &failure.code(),
                &failure.to_string(),
                &landed_at,
                &LedgerStatus::Failed,
            ],
        )
        .await
        .context("cannot record the failed file in the ledger")?;
    Ok(row.get(0))
}

/// Deletes the failed entry of this content, in the ledger or what retention kept of it in
/// `pruned_files`, so that it can be loaded again (`ingestor replay`); returns how many entries
/// were deleted.
///
/// # Errors
/// On a database error.
pub async fn clear_failed(
    client: &tokio_postgres::Client,
    identity: &FileIdentity,
) -> anyhow::Result<u64> {
    let size = i64::try_from(identity.size).context("file size exceeds bigint")?;
    let cleared: i64 = client
        .query_one(
            "WITH ledger AS (DELETE FROM ingest_files \
               WHERE content_hash = $1 AND size_bytes = $2 AND status = $3 RETURNING 1), \
             pruned AS (DELETE FROM pruned_files \
               WHERE content_hash = $1 AND size_bytes = $2 AND status = $3 RETURNING 1) \
             SELECT (SELECT count(*) FROM ledger) + (SELECT count(*) FROM pruned)",
            &[&identity.hash.as_slice(), &size, &LedgerStatus::Failed],
        )
        .await
        .context("cannot clear the failed ledger entry")?
        .get(0);
    Ok(u64::try_from(cleared).unwrap_or_default())
}

/// [`FileIdentity::lock_key`] in SQL, of a row's `content_hash`: the first 8 bytes as a
/// little-endian `bigint` (each shift in parentheses: PostgreSQL gives `|` and `<<` one
/// precedence, left to right). Zero bytes pad a hash shorter than 8 bytes (none the ingestor
/// writes, but a hand-made row must not make every prune fail).
pub const CONTENT_LOCK_KEY: &str =
    "(get_byte(content_hash || '\\x0000000000000000'::bytea, 0)::bigint \
    | (get_byte(content_hash || '\\x0000000000000000'::bytea, 1)::bigint << 8) \
    | (get_byte(content_hash || '\\x0000000000000000'::bytea, 2)::bigint << 16) \
    | (get_byte(content_hash || '\\x0000000000000000'::bytea, 3)::bigint << 24) \
    | (get_byte(content_hash || '\\x0000000000000000'::bytea, 4)::bigint << 32) \
    | (get_byte(content_hash || '\\x0000000000000000'::bytea, 5)::bigint << 40) \
    | (get_byte(content_hash || '\\x0000000000000000'::bytea, 6)::bigint << 48) \
    | (get_byte(content_hash || '\\x0000000000000000'::bytea, 7)::bigint << 56))";

/// Deletes finished ledger entries older than `days` (their rejected rows go with them) and, in
/// the same statement, keeps each one's identity, outcome and counts in `pruned_files`, so the
/// same content delivered again is recognised as finished ([`claim`]) instead of storing its
/// rejected rows a second time. Returns how many entries were pruned.
///
/// Each entry is pruned only under its content's advisory lock, the one [`claim`] takes: a
/// re-delivery being claimed while its entry is pruned would otherwise see the entry neither in
/// the ledger (deleted) nor in `pruned_files` (not yet committed) and store its rejected rows a
/// second time. An entry whose lock is held is left for the next prune.
///
/// # Errors
/// On a database error.
pub async fn prune(client: &tokio_postgres::Client, days: u32) -> anyhow::Result<u64> {
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    client
        .execute(
            &format!(
                "WITH pruned AS (DELETE FROM ingest_files WHERE status IN ($2, $3) \
               AND committed_at < now() - make_interval(days => $1) \
               AND pg_try_advisory_xact_lock({CONTENT_LOCK_KEY}) \
               RETURNING content_hash, size_bytes, file_id, status, lines, accepted, duplicates, \
                 rejected, committed_at) \
             INSERT INTO pruned_files (content_hash, size_bytes, file_id, status, lines, accepted, \
               duplicates, rejected, committed_at) \
             SELECT * FROM pruned \
             ON CONFLICT ON CONSTRAINT pruned_files_pkey DO NOTHING"
            ),
            &[&days, &LedgerStatus::Loaded, &LedgerStatus::Failed],
        )
        .await
        .context("cannot prune the ledger")
}

/// Empties the events, the ledger, what retention kept of it, the rejected rows and the Kafka
/// source's offsets and ranges, in one
/// transaction (`ingestor reset`).
///
/// # Errors
/// On a database error; without TRUNCATE privilege the error says which connection to use.
pub async fn empty_everything(client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
    let tx = client.transaction().await.context("cannot begin")?;
    // The Kafka source's stored offsets go too: emptied tables with offsets left at the end of
    // the topics would never be filled again from the messages still in Kafka.
    tx.batch_execute(
        "TRUNCATE events, rejected_rows, log_ranges, ingest_files, pruned_files, source_offsets",
    )
        .await
        .context("cannot empty the tables (reset needs the tables' owner, not the `ingestor` role: set DATABASE_URL to an admin connection)")?;
    tx.commit().await.context("cannot commit the reset")
}
