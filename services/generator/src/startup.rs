//! Running the generator: the blocking write loop on its own thread, stopped by one
//! cancellation token that SIGINT/SIGTERM (or a test) fires.

use std::future::Future;

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::pacing::Pacer;
use crate::rows::{Row, RowSource};
use crate::sink::{FileSink, PendingFile};
use crate::summary::{RowCounts, RunSummary};

/// Runs until the configured number of files is written or `shutdown` completes, then returns
/// what was produced. The file in progress at shutdown is discarded, never left half-written.
///
/// # Errors
/// When the output directory cannot be used or a file cannot be written.
pub async fn run_until_stopped(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RunSummary> {
    let cancel = CancellationToken::new();
    let worker_cancel = cancel.clone();
    // File writing is blocking I/O with fsyncs; it gets a thread of its own, not a runtime worker.
    let mut worker = tokio::task::spawn_blocking(move || generate(&settings, &worker_cancel));
    tokio::select! {
        joined = &mut worker => return joined.context("generator thread panicked")?,
        () = shutdown => {
            tracing::info!("Shutdown requested; discarding the file in progress");
            cancel.cancel();
        }
    }
    worker.await.context("generator thread panicked")?
}

/// The write loop: files of `rows` rows, paced to `rate`, until done or cancelled.
///
/// # Errors
/// When a file cannot be created, written or published.
pub fn generate(settings: &Settings, cancel: &CancellationToken) -> anyhow::Result<RunSummary> {
    let seed = settings.seed.unwrap_or_else(rand::random);
    let start = settings.start_time.unwrap_or_else(Utc::now);
    tracing::info!(
        seed,
        out = %settings.out.display(),
        rate = settings.rate,
        rows = settings.rows,
        files = settings.files,
        start_time = %start.to_rfc3339(),
        "Generator starting"
    );
    let mut sink = FileSink::open(&settings.out)?;
    let mut source = RowSource::new(settings, seed, start);
    let pacer = Pacer::new(settings.rate);
    let mut summary = RunSummary {
        seed,
        ..RunSummary::default()
    };
    let mut next_row = 0u64;
    while settings.files == 0 || summary.files < settings.files {
        let mut pending = sink.begin()?;
        let mut counts = RowCounts::default();
        let finished = write_rows(
            settings.rows,
            &mut pending,
            &mut counts,
            &mut source,
            &pacer,
            &mut next_row,
            cancel,
        )?;
        if !finished {
            summary.discarded_rows = counts.rows;
            break;
        }
        let path = pending.publish(sink.dir())?;
        tracing::debug!(path = %path.display(), rows = counts.rows, "File published");
        summary.files += 1;
        summary.published.add(&counts);
    }
    summary.elapsed_seconds = pacer.elapsed().as_secs_f64();
    Ok(summary)
}

/// Writes one file's rows; `false` when cancelled before the file was complete.
fn write_rows(
    rows: u64,
    pending: &mut PendingFile,
    counts: &mut RowCounts,
    source: &mut RowSource,
    pacer: &Pacer,
    next_row: &mut u64,
    cancel: &CancellationToken,
) -> anyhow::Result<bool> {
    let writer = pending.writer()?;
    for _ in 0..rows {
        if !pacer.wait_for(*next_row, cancel) {
            return Ok(false);
        }
        let row = source.next_row(*next_row);
        match &row {
            Row::Valid { event, .. } | Row::Duplicate(event) => writer.write_event(event),
            Row::Invalid { fields, .. } => writer.write_raw(fields),
        }
        .context("cannot write row")?;
        counts.count(&row);
        *next_row += 1;
    }
    Ok(true)
}
