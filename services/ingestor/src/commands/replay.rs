//! `ingestor replay <file>`: load one file now, typically a failed file after it was fixed.
//! Still exactly once: content already loaded is refused, and a failed ledger entry for the
//! same content is cleared first so the file can be tried again.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::internal_events::Metrics;
use crate::model::FileStamp;
use crate::model::LedgerStatus;
use crate::pipeline::loader::{load_batch, FileOutcome};
use crate::source::{lifecycle, reader, Candidate};
use crate::store::recent_ids::CommittedIds;
use crate::store::{build_pool, connect_once, ledger};

/// Loads `path`; `Ok(true)` when its rows are (now or already) in the database.
///
/// # Errors
/// When the file cannot be read or the database fails.
pub async fn run(settings: Settings, path: &Path) -> anyhow::Result<bool> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let identity =
        reader::identify(path).with_context(|| format!("cannot read {}", path.display()))?;
    let client = connect_once(&settings, "ingestor-replay").await?;
    // Clearing a failed entry (in the ledger, or what retention kept of it) is its own
    // transaction: if the load below then fails or the process dies, the file is still on disk
    // and replay can simply be run again.
    let cleared = ledger::clear_failed(&client, &identity).await?;
    if cleared > 0 {
        println!("cleared the earlier failed ledger entry for this content");
    }
    let candidate = Candidate {
        path: path.to_owned(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size: metadata.len(),
        modified: metadata
            .modified()
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH),
    };
    lifecycle::prepare_dirs(&settings)?;
    let settings = Arc::new(settings);
    let pool = build_pool(&settings);
    let outcomes = load_batch(
        &settings,
        &pool,
        std::slice::from_ref(&candidate),
        &CancellationToken::new(),
        &CommittedIds::new(0),
    )
    .await?;
    let Some((_, outcome)) = outcomes.into_iter().next() else {
        anyhow::bail!("the file was not processed");
    };
    report(&settings, &candidate, outcome)
}

fn report(
    settings: &Settings,
    candidate: &Candidate,
    outcome: FileOutcome<FileStamp>,
) -> anyhow::Result<bool> {
    match outcome {
        FileOutcome::Loaded { loaded, read } => {
            let c = loaded.counts;
            println!(
                "loaded as file_id {}: {} lines = {} accepted + {} duplicate + {} rejected",
                loaded.file_id, c.lines, c.accepted, c.duplicates, c.rejected
            );
            // A one-shot command: its counters are never scraped, the log lines are what count.
            let metrics = Metrics::new().context("cannot register metrics")?;
            let moved = lifecycle::after_loaded(
                settings,
                &metrics,
                &candidate.path,
                &read,
                loaded.file_id,
            )?;
            match moved {
                lifecycle::Finished::Changed(change) => println!(
                    "{} was {} after it was read; it was left in place and is loaded as a new file by the next run",
                    candidate.path.display(),
                    change.code()
                ),
                lifecycle::Finished::Gone => println!(
                    "{} was gone when it was time to move it; nothing was archived",
                    candidate.path.display()
                ),
                lifecycle::Finished::Moved(_) | lifecycle::Finished::Deleted => {}
            }
            Ok(true)
        }
        FileOutcome::AlreadyKnown {
            file_id, status, ..
        } => {
            println!("this content is already in the ledger as file_id {file_id} ({status}); nothing loaded twice");
            Ok(status == LedgerStatus::Loaded)
        }
        FileOutcome::Failed {
            file_id, failure, ..
        } => {
            println!(
                "failed again (file_id {file_id}): {}: {failure}",
                failure.code()
            );
            Ok(false)
        }
        FileOutcome::Busy => {
            println!("a running ingestor is loading this content right now; try again in a moment");
            Ok(false)
        }
        FileOutcome::Vanished => anyhow::bail!("{} disappeared", candidate.path.display()),
        FileOutcome::Refused { message, .. } => anyhow::bail!(
            "{} was not read: {message}; only a regular file is loaded, never through a \
             symbolic link",
            candidate.path.display()
        ),
        FileOutcome::Retry(why) => anyhow::bail!(
            "{} could not be read consistently: {why}",
            candidate.path.display()
        ),
    }
}
