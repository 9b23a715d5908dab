//! Running the generator: bind the HTTP listener, then run the blocking write loop on its own
//! thread and the `/metrics` + `/livez` server side by side, both stopped by one cancellation
//! token that SIGINT/SIGTERM (or a test) fires, or that the loop's end fires.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Settings, SinkSettings};
use crate::internal_events::{GeneratorStarting, HttpDrainTimedOut, Metrics, ShutdownRequested};
use crate::pacing::Pacer;
use crate::routes::{router, AppState};
use crate::rows::RowSource;
use crate::sink::{DirectorySink, KafkaSink, Sink, Stopped};
use crate::summary::{RowCounts, RunSummary};

/// How long the HTTP server may take to finish requests in flight once the loop has stopped;
/// a hung scrape must not keep the process alive.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A built, not yet running, generator: the HTTP listener is bound and the metrics registered.
pub struct Application {
    settings: Settings,
    listener: TcpListener,
    metrics: Metrics,
}

impl Application {
    /// Binds the HTTP listener (port 0 picks a free port) and registers the metrics.
    ///
    /// # Errors
    /// When the listen address cannot be bound (e.g. the port is in use).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} (key `listen`)", settings.listen))?;
        let metrics = Metrics::new().context("cannot register metrics")?;
        Ok(Application {
            settings,
            listener,
            metrics,
        })
    }

    /// The bound HTTP address.
    ///
    /// # Errors
    /// When the socket cannot report its address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound HTTP port.
    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Runs until the configured number of batches is published or `shutdown` completes, then
    /// stops the HTTP server gracefully and returns what was produced. The file in progress at
    /// shutdown is discarded, never left half-written; Kafka messages already handed to the
    /// producer are delivered.
    ///
    /// # Errors
    /// When the sink cannot be opened (directory, brokers, topic), a batch cannot be written
    /// or published, or the HTTP server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<RunSummary> {
        let Application {
            settings,
            listener,
            metrics,
        } = self;
        let settings = resolve(settings);
        let listen = listener
            .local_addr()
            .context("cannot read the bound address")?;
        GeneratorStarting {
            settings: &settings,
            listen: Some(listen),
        }
        .emit();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let writer_alive = Arc::new(AtomicBool::new(true));
        let state = AppState {
            metrics: metrics.clone(),
            writer_alive: writer_alive.clone(),
        };
        let server = tracker.spawn({
            let cancel = cancel.clone();
            async move {
                axum::serve(listener, router(state))
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await
            }
        });
        // File writing is blocking I/O with fsyncs; it gets a thread of its own, not a runtime
        // worker.
        let mut worker = tracker.spawn_blocking({
            let cancel = cancel.clone();
            move || {
                let result = generate_with_metrics(&settings, &cancel, &metrics);
                writer_alive.store(false, Ordering::Relaxed);
                result
            }
        });
        tracker.close();
        let result = tokio::select! {
            joined = &mut worker => joined,
            () = shutdown => {
                ShutdownRequested.emit();
                cancel.cancel();
                worker.await
            }
        };
        // The loop is over, by itself or on request: the server stops with it.
        cancel.cancel();
        if tokio::time::timeout(HTTP_DRAIN_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            HttpDrainTimedOut.emit();
            server.abort();
        }
        let summary = result.context("generator thread panicked")??;
        match server.await {
            Ok(served) => served.context("HTTP server failed")?,
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e).context("HTTP server task panicked"),
        }
        Ok(summary)
    }
}

/// The write loop without an HTTP server, for library use (tests, benchmarks): batches of
/// `rows` rows into the configured sink, paced to `rate`, until done or cancelled. Metrics go
/// to a registry nobody reads.
///
/// # Errors
/// When the sink cannot be opened, or a batch cannot be written or published.
pub fn generate(settings: &Settings, cancel: &CancellationToken) -> anyhow::Result<RunSummary> {
    let metrics = Metrics::new().context("cannot register metrics")?;
    let settings = resolve(settings.clone());
    GeneratorStarting {
        settings: &settings,
        listen: None,
    }
    .emit();
    generate_with_metrics(&settings, cancel, &metrics)
}

/// Fixes the seed and start time a run draws when they are not configured, so the start-up
/// line can log them before the loop begins.
fn resolve(mut settings: Settings) -> Settings {
    settings.seed = Some(settings.seed.unwrap_or_else(rand::random));
    settings.start_time = Some(settings.start_time.unwrap_or_else(Utc::now));
    settings
}

/// The write loop, counting each published batch into `metrics` (once per batch, never per
/// row). Does not log the start-up line; the summary carries the seed.
///
/// # Errors
/// When the sink cannot be opened, or a batch cannot be written or published.
pub fn generate_with_metrics(
    settings: &Settings,
    cancel: &CancellationToken,
    metrics: &Metrics,
) -> anyhow::Result<RunSummary> {
    metrics.set_target_rate(settings.rate);
    match &settings.sink {
        SinkSettings::Directory => {
            let sink = DirectorySink::open(&settings.out, metrics.clone())?;
            write_batches(settings, cancel, sink)
        }
        SinkSettings::Kafka(kafka) => {
            let sink = KafkaSink::connect(kafka, metrics.clone())?;
            write_batches(settings, cancel, sink)
        }
    }
}

/// Batches of `rows` rows into `sink`, paced to `rate`, until `files` batches are published or
/// `cancel` fires.
fn write_batches(
    settings: &Settings,
    cancel: &CancellationToken,
    mut sink: impl Sink,
) -> anyhow::Result<RunSummary> {
    let seed = settings.seed.unwrap_or_else(rand::random);
    let start = settings.start_time.unwrap_or_else(Utc::now);
    let mut source = RowSource::new(settings, seed, start);
    let pacer = Pacer::new(settings.rate);
    let mut summary = RunSummary {
        seed,
        ..RunSummary::default()
    };
    let mut next_row = 0u64;
    while settings.files == 0 || summary.files < settings.files {
        sink.begin()?;
        let mut counts = RowCounts::default();
        let finished = write_rows(
            settings.rows,
            &mut sink,
            &mut counts,
            &mut source,
            &pacer,
            &mut next_row,
            cancel,
        )?;
        if !finished {
            match sink.stop(&counts)? {
                Stopped::Discarded => summary.discarded_rows = counts.rows,
                Stopped::Delivered => summary.published.add(&counts),
            }
            break;
        }
        sink.publish(&counts, cancel)?;
        summary.files += 1;
        summary.published.add(&counts);
    }
    summary.elapsed_seconds = pacer.elapsed().as_secs_f64();
    Ok(summary)
}

/// Writes one batch's rows; `false` when cancelled before the batch was complete.
fn write_rows(
    rows: u64,
    sink: &mut impl Sink,
    counts: &mut RowCounts,
    source: &mut RowSource,
    pacer: &Pacer,
    next_row: &mut u64,
    cancel: &CancellationToken,
) -> anyhow::Result<bool> {
    for _ in 0..rows {
        if !pacer.wait_for(*next_row, cancel) {
            return Ok(false);
        }
        let row = source.next_row(*next_row);
        sink.write(&row)?;
        counts.count(&row);
        *next_row += 1;
    }
    Ok(true)
}
