//! The status report: what an operator asks first (is there a backlog, when was the last commit,
//! what are the totals, what failed recently), from the input directory and the ledger.
//!
//! One type for both ways of asking, `ingestor status --json` and `GET /status`, so a script
//! written against one works against the other. A part that cannot be read leaves its fields
//! `null` and says why in `error`: with the database down the backlog is still reported.

use std::time::SystemTime;

use anyhow::Context;
use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::source::Discovery;
use crate::store::connect_once;
pub use crate::store::ledger_report::{Failure, LedgerSummary, Totals};
use crate::store::offsets::StoredPosition;

/// `application_name` of the status connection (the command's, and the one `/status` keeps).
pub const STATUS_APPLICATION_NAME: &str = "ingestor-status";

/// The status report.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// `CARGO_PKG_VERSION` of the binary that answered.
    pub version: &'static str,
    /// The answering replica's instance id (as recorded in the ledger); `null` from the
    /// `status` command, which is no replica.
    pub instance_id: Option<String>,
    /// When the report was gathered (RFC 3339, UTC).
    pub as_of: String,
    /// The input directory's waiting files; `null` when it cannot be listed, and for the Kafka
    /// source (its backlog is the consumer lag, in `/metrics`).
    pub backlog: Option<Backlog>,
    /// Time of the last committed file (RFC 3339, UTC); `null` before the first, or when the
    /// ledger cannot be read.
    pub last_commit: Option<String>,
    /// Totals over the ledger (within its retention); `null` when it cannot be read.
    pub totals: Option<Totals>,
    /// The most recent failed files, newest first.
    pub recent_failures: Vec<Failure>,
    /// The Kafka source's partitions and their offsets stored in PostgreSQL (where each
    /// partition's next batch starts), by topic and partition; `null` for the directory source
    /// or when the database cannot be read.
    pub kafka_partitions: Option<Vec<StoredPosition>>,
    /// Why the input directory could not be listed; `null` when it could.
    pub directory_error: Option<String>,
    /// Why the ledger could not be read (the database's connection error names the cause and
    /// the fix); `null` when it could.
    pub database_error: Option<String>,
}

/// Files waiting in the input directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backlog {
    /// Files waiting.
    pub files: usize,
    /// Bytes waiting.
    pub bytes: u64,
    /// Age of the oldest waiting file in seconds (0 when none waits).
    pub oldest_age_seconds: f64,
}

impl StatusReport {
    /// Puts the parts together; a failed part's error goes into its `*_error` field.
    pub fn new(
        instance_id: Option<String>,
        backlog: Option<anyhow::Result<Backlog>>,
        ledger: anyhow::Result<LedgerSummary>,
    ) -> Self {
        let (backlog, directory_error) = backlog.map_or((None, None), split);
        let (ledger, database_error) = split(ledger);
        let (last_commit, totals, recent_failures, kafka_partitions) = match ledger {
            Some(l) => (
                l.last_commit,
                Some(l.totals),
                l.recent_failures,
                l.kafka_partitions,
            ),
            None => (None, None, Vec::new(), None),
        };
        StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            instance_id,
            as_of: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            backlog,
            last_commit,
            totals,
            recent_failures,
            kafka_partitions,
            directory_error,
            database_error,
        }
    }

    /// Whether every part could be read.
    pub fn is_complete(&self) -> bool {
        self.directory_error.is_none() && self.database_error.is_none()
    }
}

fn split<T>(part: anyhow::Result<T>) -> (Option<T>, Option<String>) {
    match part {
        Ok(value) => (Some(value), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

/// The waiting files, from a listing of the input directory.
///
/// # Errors
/// When the directory cannot be listed.
pub fn backlog(settings: &Settings, discovery: &Discovery) -> anyhow::Result<Backlog> {
    let scan = discovery
        .scan()
        .with_context(|| format!("cannot list {}", settings.input_dir.display()))?;
    let oldest = scan.waiting.first().map(|c| {
        SystemTime::now()
            .duration_since(c.modified)
            .unwrap_or_default()
    });
    Ok(Backlog {
        files: scan.waiting.len(),
        bytes: scan.waiting.iter().map(|c| c.size).sum(),
        oldest_age_seconds: oldest.map_or(0.0, |d| d.as_secs_f64()),
    })
}

/// Gathers the report once, over a connection of its own (the `status` command).
pub async fn gather_once(settings: &Settings) -> StatusReport {
    let backlog = settings.kafka.is_none().then(|| {
        Discovery::unwatched(&settings.input_dir, settings.settle)
            .and_then(|discovery| backlog(settings, &discovery))
    });
    let ledger = async {
        let client = connect_once(settings, STATUS_APPLICATION_NAME).await?;
        crate::store::ledger_report::summary(&client, settings.kafka.is_some()).await
    }
    .await;
    StatusReport::new(None, backlog, ledger)
}
