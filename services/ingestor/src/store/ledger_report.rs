//! Read-only questions to the ledger for the status report (`ingestor status`, `GET /status`):
//! totals, the last commit and the most recent failures.

use super::offsets::StoredPosition;
use anyhow::Context;
use serde::Serialize;

use crate::model::LedgerStatus;

/// How many recent failures the report shows.
const RECENT_FAILURES: i64 = 5;

/// What the ledger tells about the work done (within its retention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSummary {
    /// Time of the last committed file (RFC 3339, UTC), `None` before the first.
    pub last_commit: Option<String>,
    /// Totals over the ledger.
    pub totals: Totals,
    /// The most recent failed files, newest first.
    pub recent_failures: Vec<Failure>,
    /// The Kafka source's stored offsets, when asked for.
    pub kafka_partitions: Option<Vec<StoredPosition>>,
}

/// Ledger totals; `lines = accepted + duplicates + rejected` over loaded files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Files loaded.
    pub files_loaded: i64,
    /// Files failed as a whole.
    pub files_failed: i64,
    /// Data lines of loaded files.
    pub lines: i64,
    /// Rows inserted into `events`.
    pub accepted: i64,
    /// Rows whose event_id was already stored.
    pub duplicates: i64,
    /// Rows that broke the contract.
    pub rejected: i64,
}

/// One failed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// File name.
    pub file: String,
    /// Reason code.
    pub reason: String,
    /// Details.
    pub message: String,
    /// When (RFC 3339).
    pub at: String,
}

/// Reads the summary in two queries.
///
/// # Errors
/// When the ledger cannot be read.
pub async fn summary(
    client: &tokio_postgres::Client,
    with_kafka_partitions: bool,
) -> anyhow::Result<LedgerSummary> {
    let totals = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = $1), count(*) FILTER (WHERE status = $2), \
             coalesce(sum(lines) FILTER (WHERE status = $1), 0)::bigint, \
             coalesce(sum(accepted), 0)::bigint, coalesce(sum(duplicates), 0)::bigint, \
             coalesce(sum(rejected) FILTER (WHERE status = $1), 0)::bigint, \
             to_char(max(committed_at) FILTER (WHERE status = $1) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
             FROM ingest_files",
            &[&LedgerStatus::Loaded, &LedgerStatus::Failed],
        )
        .await
        .context("cannot read the ledger")?;
    let failures = client
        .query(
            "SELECT file_name, coalesce(failure_reason, ''), coalesce(failure_message, ''), \
             to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM ingest_files WHERE status = $2 ORDER BY committed_at DESC NULLS LAST LIMIT $1",
            &[&RECENT_FAILURES, &LedgerStatus::Failed],
        )
        .await
        .context("cannot read recent failures")?;
    let kafka_partitions = match with_kafka_partitions {
        true => Some(super::offsets::all_positions(client).await?),
        false => None,
    };
    Ok(LedgerSummary {
        kafka_partitions,
        last_commit: totals.get(6),
        totals: Totals {
            files_loaded: totals.get(0),
            files_failed: totals.get(1),
            lines: totals.get(2),
            accepted: totals.get(3),
            duplicates: totals.get(4),
            rejected: totals.get(5),
        },
        recent_failures: failures
            .iter()
            .map(|r| Failure {
                file: r.get(0),
                reason: r.get(1),
                message: r.get(2),
                at: r.get::<_, Option<String>>(3).unwrap_or_default(),
            })
            .collect(),
    })
}
