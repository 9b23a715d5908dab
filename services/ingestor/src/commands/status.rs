//! `ingestor status`: what an operator asks first. Is there a backlog, when was the last
//! commit, what are the totals, what failed recently. Read from the directory and the ledger.

use std::time::SystemTime;

use anyhow::Context;
use serde::Serialize;

use crate::config::Settings;
use crate::source::Discovery;
use crate::store::{connect_once, ConnectError};

/// How many recent failures to show.
const RECENT_FAILURES: i64 = 5;

/// The status report.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Files waiting in the input directory.
    pub backlog_files: usize,
    /// Bytes waiting.
    pub backlog_bytes: u64,
    /// Age of the oldest waiting file, seconds.
    pub oldest_waiting_seconds: f64,
    /// Time of the last committed file (RFC 3339), if any.
    pub last_commit: Option<String>,
    /// Ledger entries by status.
    pub files_loaded: i64,
    /// Files that failed as a whole.
    pub files_failed: i64,
    /// Totals over loaded files in the ledger (within retention).
    pub lines: i64,
    /// Accepted rows.
    pub accepted: i64,
    /// Duplicate rows.
    pub duplicates: i64,
    /// Rejected rows.
    pub rejected: i64,
    /// The most recent failures.
    pub recent_failures: Vec<Failure>,
}

/// One failed file.
#[derive(Debug, Serialize)]
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

/// What `status` prints when the database cannot be reached: what the input directory alone
/// tells, and why the database did not answer.
#[derive(Debug, Serialize)]
pub struct Unreachable {
    /// Files waiting in the input directory.
    pub backlog_files: usize,
    /// Bytes waiting.
    pub backlog_bytes: u64,
    /// Age of the oldest waiting file, seconds.
    pub oldest_waiting_seconds: f64,
    /// Why the database could not be reached, and the fix.
    pub database_error: String,
}

/// Prints the status as a table or JSON; `false` when the database could not be reached, in
/// which case the backlog is printed all the same, with the cause.
///
/// # Errors
/// When the directory cannot be listed, or the database fails after connecting.
pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<bool> {
    let status = match collect(settings).await {
        Ok(status) => status,
        Err(e) => {
            let Some(cause) = e.chain().find_map(|c| c.downcast_ref::<ConnectError>()) else {
                return Err(e);
            };
            print_unreachable(&unreachable(settings, cause)?, json)?;
            return Ok(false);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("cannot encode status")?
        );
    } else {
        print_table(&status);
    }
    Ok(true)
}

/// The backlog from the input directory, with the database's connection error.
fn unreachable(settings: &Settings, cause: &ConnectError) -> anyhow::Result<Unreachable> {
    let scan = Discovery::unwatched(&settings.input_dir, settings.settle)?
        .scan()
        .with_context(|| format!("cannot list {}", settings.input_dir.display()))?;
    let oldest = scan.waiting.first().map(|c| {
        SystemTime::now()
            .duration_since(c.modified)
            .unwrap_or_default()
    });
    Ok(Unreachable {
        backlog_files: scan.waiting.len(),
        backlog_bytes: scan.waiting.iter().map(|c| c.size).sum(),
        oldest_waiting_seconds: oldest.map_or(0.0, |d| d.as_secs_f64()),
        database_error: cause.to_string(),
    })
}

fn print_unreachable(s: &Unreachable, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(s).context("cannot encode status")?
        );
    } else {
        println!(
            "backlog        {} files, {} bytes, oldest {:.1} s",
            s.backlog_files, s.backlog_bytes, s.oldest_waiting_seconds
        );
        println!("database       unreachable: {}", s.database_error);
    }
    Ok(())
}

/// Gathers the status.
///
/// # Errors
/// When the directory or the database cannot be read.
pub async fn collect(settings: &Settings) -> anyhow::Result<Status> {
    let discovery = Discovery::unwatched(&settings.input_dir, settings.settle)?;
    let client = connect_once(settings, STATUS_APPLICATION_NAME).await?;
    collect_with(settings, &discovery, &client).await
}

/// `application_name` of the status connection (the command's, and the one `/status` keeps).
pub const STATUS_APPLICATION_NAME: &str = "ingestor-status";

/// Gathers the status from a listing of the input directory and an open connection (`/status`
/// keeps both between requests).
///
/// # Errors
/// When the directory or the ledger cannot be read.
pub async fn collect_with(
    settings: &Settings,
    discovery: &Discovery,
    client: &tokio_postgres::Client,
) -> anyhow::Result<Status> {
    let scan = discovery
        .scan()
        .with_context(|| format!("cannot list {}", settings.input_dir.display()))?;
    let totals = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'loaded'), count(*) FILTER (WHERE status = 'failed'), \
             coalesce(sum(lines) FILTER (WHERE status = 'loaded'), 0)::bigint, \
             coalesce(sum(accepted), 0)::bigint, coalesce(sum(duplicates), 0)::bigint, \
             coalesce(sum(rejected) FILTER (WHERE status = 'loaded'), 0)::bigint, \
             to_char(max(committed_at) FILTER (WHERE status = 'loaded') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
             FROM ingest_files",
            &[],
        )
        .await
        .context("cannot read the ledger")?;
    let failures = client
        .query(
            "SELECT file_name, coalesce(failure_reason, ''), coalesce(failure_message, ''), \
             to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM ingest_files WHERE status = 'failed' ORDER BY committed_at DESC NULLS LAST LIMIT $1",
            &[&RECENT_FAILURES],
        )
        .await
        .context("cannot read recent failures")?;
    let oldest = scan.waiting.first().map(|c| {
        SystemTime::now()
            .duration_since(c.modified)
            .unwrap_or_default()
    });
    Ok(Status {
        backlog_files: scan.waiting.len(),
        backlog_bytes: scan.waiting.iter().map(|c| c.size).sum(),
        oldest_waiting_seconds: oldest.map_or(0.0, |d| d.as_secs_f64()),
        files_loaded: totals.get(0),
        files_failed: totals.get(1),
        lines: totals.get(2),
        accepted: totals.get(3),
        duplicates: totals.get(4),
        rejected: totals.get(5),
        last_commit: totals.get(6),
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

fn print_table(s: &Status) {
    println!(
        "backlog        {} files, {} bytes, oldest {:.1} s",
        s.backlog_files, s.backlog_bytes, s.oldest_waiting_seconds
    );
    println!(
        "last commit    {}",
        s.last_commit.as_deref().unwrap_or("never")
    );
    println!(
        "files          {} loaded, {} failed",
        s.files_loaded, s.files_failed
    );
    println!(
        "lines          {} = {} accepted + {} duplicate + {} rejected",
        s.lines, s.accepted, s.duplicates, s.rejected
    );
    if s.recent_failures.is_empty() {
        println!("failures       none");
    }
    for f in &s.recent_failures {
        println!(
            "failed         {}  {}  {}  ({})",
            f.at, f.file, f.reason, f.message
        );
    }
}
