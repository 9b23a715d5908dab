//! `ingestor status`: prints the [`StatusReport`] as a table or as JSON (the same JSON as
//! `GET /status`).

use anyhow::Context;

use crate::config::Settings;
use crate::status::{gather_once, StatusReport};

/// Prints the status; `false` when a part could not be read (the database is down, the
/// directory unreadable), in which case what could be read is printed all the same, with the
/// cause.
///
/// # Errors
/// When the report cannot be encoded.
pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<bool> {
    let report = gather_once(settings).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode status")?
        );
    } else {
        print_table(&report);
    }
    Ok(report.is_complete())
}

fn print_table(s: &StatusReport) {
    if let Some(b) = &s.backlog {
        println!(
            "backlog        {} files, {} bytes, oldest {:.1} s",
            b.files, b.bytes, b.oldest_age_seconds
        );
    }
    if let Some(error) = &s.directory_error {
        println!("directory      unreadable: {error}");
    }
    if let Some(totals) = &s.totals {
        println!(
            "last commit    {}",
            s.last_commit.as_deref().unwrap_or("never")
        );
        println!(
            "files          {} loaded, {} failed",
            totals.files_loaded, totals.files_failed
        );
        println!(
            "lines          {} = {} accepted + {} duplicate + {} rejected",
            totals.lines, totals.accepted, totals.duplicates, totals.rejected
        );
        if s.recent_failures.is_empty() {
            println!("failures       none");
        }
    }
    for p in s.kafka_partitions.iter().flatten() {
        println!(
            "partition      {}/{}  next offset {}  moved {} by {}",
            p.topic,
            p.partition,
            p.next_offset,
            p.updated_at,
            p.updated_by.as_deref().unwrap_or("?")
        );
    }
    for f in &s.recent_failures {
        println!(
            "failed         {}  {}  {}  ({})",
            f.at, f.file, f.reason, f.message
        );
    }
    if let Some(error) = &s.database_error {
        println!("database       unreachable: {error}");
    }
}
