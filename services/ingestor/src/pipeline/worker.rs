//! The loading loops: scan, load a batch, finish its files, repeat; back off on database errors;
//! stop taking work on shutdown. Beside them, one housekeeping loop reports the backlog on its
//! own clock.
//!
//! Several loops run side by side (`loaders`, default 2), each with its own connection and
//! transaction, on disjoint files (an in-process in-flight set hands each file to one loop).
//! PostgreSQL executes one session's COPY on one core, so a second loader is what lets the
//! database use the machine's other core; `psql \copy` cannot. Replicas in other processes
//! share the work the same way through the ledger's locks.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::loader::{load_batch, within_byte_budget, FileOutcome, LoadedFile};
use super::reader;
use crate::config::Settings;
use crate::internal_events::{
    BacklogObserved, BatchCommitted, BatchDataRefused, BatchEnded, DatabaseFailed,
    DirectoryUnlistable, FileAlreadyLoaded, FileChanged, FileFailed, FileLoaded, FileMovedAs,
    FileNotMoved, FileRefused, FileRetried, FileVanished, FutureModificationTimeSeen, LedgerPruned,
    LoaderLoopPanicked, LoaderStopped, LoadingBlocked, Metrics, UnmovedFile,
};
use crate::lifecycle;
use crate::model::{FileFailure, LedgerStatus};
use crate::readiness::Readiness;
use crate::source::{Candidate, Discovery, Scan};
use crate::store::pool::{classify, reached_database, Failure};
use crate::store::presence::{Presence, SeenPresence};
use crate::store::recent_ids::CommittedIds;
use crate::store::{ledger, Pool};

/// How long a file another replica is loading (or that could not be read) is left alone.
const SKIP_FOR: Duration = Duration::from_millis(500);
/// A file that alone makes PostgreSQL refuse its data this many times in a row is quarantined.
const QUARANTINE_AFTER: u32 = 3;
/// How often finished ledger entries past retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Shared state the loops report through.
#[derive(Clone)]
pub struct WorkerState {
    /// Metrics registry.
    pub metrics: Metrics,
    /// What the loops' batches say about readiness, for `/readyz`.
    pub readiness: Readiness,
    /// The presence lock that keeps `ingestor reset` away; loading waits while it is not held.
    pub presence: Presence,
}

/// What the loops of one process share.
struct Shared {
    discovery: Discovery,
    /// Files some loop is loading; a std mutex, never held across an await.
    in_flight: Mutex<HashSet<PathBuf>>,
    /// Event ids the loops committed recently (duplicates of them are dropped in memory).
    committed: CommittedIds,
}

/// Runs the loader loops until `cancel` fires; each returns after its batch in flight committed
/// or failed.
///
/// # Errors
/// If a loop panicked (a bug): the others are stopped and the error reaches `main`, so the
/// process exits non-zero and gets restarted instead of limping on without a loader.
pub async fn run(
    settings: Arc<Settings>,
    pool: Pool,
    discovery: Discovery,
    state: WorkerState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let cancel = cancel.child_token();
    let shared = Arc::new(Shared {
        discovery,
        in_flight: Mutex::default(),
        committed: CommittedIds::new(settings.dedup_memory_ids),
    });
    let mut loops = JoinSet::new();
    state.metrics.set_loaders(settings.loaders);
    loops.spawn(housekeeping(
        settings.clone(),
        shared.clone(),
        state.metrics.clone(),
        cancel.clone(),
    ));
    for index in 0..settings.loaders {
        let context = LoopContext {
            index,
            settings: settings.clone(),
            pool: pool.clone(),
            shared: shared.clone(),
            state: state.clone(),
            cancel: cancel.clone(),
        };
        loops.spawn(run_loop(context));
    }
    let mut failure = None;
    while let Some(joined) = loops.join_next().await {
        if let Err(e) = joined {
            LoaderLoopPanicked { error: &e }.emit(&state.metrics);
            cancel.cancel();
            failure.get_or_insert(e);
        }
    }
    LoaderStopped.emit(&state.metrics);
    match failure {
        Some(e) => Err(anyhow::Error::new(e).context("a loader loop panicked")),
        None => Ok(()),
    }
}

/// One loop's handles.
struct LoopContext {
    index: usize,
    settings: Arc<Settings>,
    pool: Pool,
    shared: Arc<Shared>,
    state: WorkerState,
    cancel: CancellationToken,
}

/// One loader loop. Its span (`loader=<index>`) is on every log line it emits, so the lines of
/// loaders working side by side can be told apart.
#[tracing::instrument(name = "loader", skip_all, fields(loader = ctx.index))]
async fn run_loop(ctx: LoopContext) {
    let LoopContext {
        index,
        settings,
        pool,
        shared,
        state,
        cancel,
    } = ctx;
    let mut backoff = Backoff::new(settings.retry_initial, settings.retry_max);
    let mut skipped: HashMap<PathBuf, Instant> = HashMap::new();
    let mut last_prune: Option<Instant> = None;
    let mut breaker = DataErrorBreaker::default();
    let mut changes = shared.discovery.subscribe();
    let mut seen_presence = SeenPresence::default();
    while !cancel.is_cancelled() {
        let scan = shared.discovery.scan().unwrap_or_else(|e| {
            DirectoryUnlistable { error: &e }.emit(&state.metrics);
            Scan::default()
        });
        report_scan(&scan, &state.metrics);
        if index == 0 {
            prune_if_due(&settings, &pool, &state.metrics, &mut last_prune).await;
        }
        skipped.retain(|_, until| *until > Instant::now());
        if scan.ready.is_empty() {
            state.readiness.nothing_to_load();
        }
        let ready: Vec<Candidate> = scan
            .ready
            .into_iter()
            .filter(|c| !skipped.contains_key(&c.path))
            .collect();
        let Some(claimed) = InFlight::take(&shared, breaker.batch(&ready), &settings) else {
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(settings.rescan_interval) => {}
                () = cancel.cancelled() => {}
            }
            continue;
        };
        state
            .presence
            .before_batch(&mut seen_presence, &shared.committed, &cancel)
            .await;
        let batch = claimed.files();
        let started = Instant::now();
        let loaded = load_batch(&settings, &pool, batch, &cancel, &shared.committed).await;
        BatchEnded {
            busy: started.elapsed(),
        }
        .emit(&state.metrics);
        match loaded {
            Ok(outcomes) => {
                state.readiness.batch_committed();
                backoff.reset();
                breaker.succeeded();
                BatchCommitted {
                    files: outcomes.len(),
                    duration: started.elapsed(),
                }
                .emit(&state.metrics);
                for (candidate, outcome) in outcomes {
                    if let FileOutcome::Refused { kind, message } = &outcome {
                        // Reported once, whether a scan or this open found it first.
                        if shared.discovery.mark_refused(&candidate.name, kind) {
                            FileRefused {
                                name: &candidate.name,
                                kind,
                                message,
                            }
                            .emit(&state.metrics);
                        }
                    }
                    finish(&settings, &state.metrics, &candidate, outcome, &mut skipped);
                }
            }
            Err(error) => {
                let failure = classify(&error);
                if failure == Failure::RowData {
                    state.readiness.data_refused();
                    // The database is up but refuses some file's rows: narrow it down to the
                    // file and set that file aside, instead of retrying the batch forever.
                    set_aside_refused(&settings, &pool, &state, &mut breaker, batch, &error).await;
                    continue;
                }
                let retry_in = backoff.next_delay();
                // No file is to blame when no retry fixes it: say why on /readyz, and keep
                // backing off (never quarantining) until an operator fixed it.
                let blocked = failure.blocking_reason();
                match &blocked {
                    Some(reason) => LoadingBlocked {
                        error: &error,
                        reason,
                        retry_in,
                    }
                    .emit(&state.metrics),
                    None => DatabaseFailed {
                        error: &error,
                        retry_in,
                    }
                    .emit(&state.metrics),
                }
                state
                    .readiness
                    .batch_failed(reached_database(&error), blocked);
                drop(claimed);
                tokio::select! {
                    () = tokio::time::sleep(retry_in) => {}
                    () = cancel.cancelled() => {}
                }
            }
        }
    }
}

/// A batch whose data PostgreSQL refused: several files are retried one by one; a file that
/// is refused alone (three times in a row) is quarantined.
async fn set_aside_refused(
    settings: &Settings,
    pool: &Pool,
    state: &WorkerState,
    breaker: &mut DataErrorBreaker,
    batch: &[Candidate],
    error: &anyhow::Error,
) {
    match breaker.failed(batch) {
        Some(culprit) => quarantine(settings, pool, &state.metrics, &culprit, error).await,
        None => BatchDataRefused {
            error,
            files: batch.len(),
        }
        .emit(&state.metrics),
    }
}

/// Files one loop has taken; released (for any loop to take again) when dropped.
struct InFlight<'a> {
    shared: &'a Shared,
    files: Vec<Candidate>,
}

impl<'a> InFlight<'a> {
    /// Takes the ready files no other loop is loading, oldest first, that one batch loads (up
    /// to `batch_max_files`, within `batch_max_bytes`); `None` if none. Taking more would keep
    /// files the batch leaves out from the other loops until it commits.
    fn take(shared: &'a Shared, ready: &[Candidate], settings: &Settings) -> Option<Self> {
        let mut in_flight = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let free: Vec<Candidate> = ready
            .iter()
            .filter(|c| !in_flight.contains(&c.path))
            .take(settings.batch_max_files)
            .cloned()
            .collect();
        let files = within_byte_budget(&free, settings.batch_max_bytes).to_vec();
        if files.is_empty() {
            return None;
        }
        in_flight.extend(files.iter().map(|c| c.path.clone()));
        Some(InFlight { shared, files })
    }

    fn files(&self) -> &[Candidate] {
        &self.files
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for file in &self.files {
            in_flight.remove(&file.path);
        }
    }
}

/// Narrows a batch whose data PostgreSQL refuses down to the one file responsible.
#[derive(Default)]
struct DataErrorBreaker {
    /// Single-file batches still to run before batching resumes.
    isolate: usize,
    /// The file that failed alone, and how many times in a row.
    strikes: Option<(PathBuf, u32)>,
}

impl DataErrorBreaker {
    fn batch<'a>(&self, ready: &'a [Candidate]) -> &'a [Candidate] {
        if self.isolate > 0 {
            &ready[..ready.len().min(1)]
        } else {
            ready
        }
    }

    fn succeeded(&mut self) {
        self.isolate = self.isolate.saturating_sub(1);
        self.strikes = None;
    }

    /// Records a failed batch; returns the file to quarantine once one is proven guilty.
    fn failed(&mut self, batch: &[Candidate]) -> Option<Candidate> {
        if batch.len() > 1 {
            self.isolate = batch.len();
            return None;
        }
        let candidate = batch.first()?;
        let count = match &self.strikes {
            Some((path, n)) if *path == candidate.path => n + 1,
            _ => 1,
        };
        self.strikes = Some((candidate.path.clone(), count));
        (count >= QUARANTINE_AFTER).then(|| {
            self.strikes = None;
            candidate.clone()
        })
    }
}

/// Records a file whose rows PostgreSQL refuses as failed (`database_rejected`) and moves it to
/// the failed directory, so one such file cannot stop the service.
async fn quarantine(
    settings: &Settings,
    pool: &Pool,
    metrics: &Metrics,
    candidate: &Candidate,
    error: &anyhow::Error,
) {
    let failure = FileFailure::DatabaseRejected(format!("{error:#}"));
    let recorded = async {
        let path = candidate.path.clone();
        // Opened and hashed once more: the file recorded as failed is the file that is moved.
        let opened = tokio::task::spawn_blocking(move || reader::open(&path)).await??;
        let mut conn = pool.get().await?;
        // In doubt until COMMIT answered, as in `load_batch`.
        conn.doubt();
        let tx = conn.transaction().await?;
        let file_id = ledger::record_failed(
            &tx,
            &opened.identity,
            &candidate.name,
            candidate.modified,
            &settings.instance_id,
            &failure,
        )
        .await?;
        tx.commit().await?;
        conn.settle();
        anyhow::Ok((file_id, opened.stamp))
    };
    match recorded.await {
        Ok((file_id, read)) => {
            FileFailed {
                name: &candidate.name,
                failure: &failure,
            }
            .emit(metrics);
            match lifecycle::after_failed(settings, metrics, &candidate.path, &read, file_id) {
                Ok(moved) => report_move(metrics, candidate, file_id, &moved),
                Err(e) => FileNotMoved {
                    name: &candidate.name,
                    which: UnmovedFile::Quarantined,
                    error: &e,
                }
                .emit(metrics),
            }
        }
        Err(e) => FileNotMoved {
            name: &candidate.name,
            which: UnmovedFile::NotQuarantined,
            error: &e,
        }
        .emit(metrics),
    }
}

/// After COMMIT: report the file and move it where it belongs.
fn finish(
    settings: &Settings,
    metrics: &Metrics,
    candidate: &Candidate,
    outcome: FileOutcome,
    skipped: &mut HashMap<PathBuf, Instant>,
) {
    let moved = match outcome {
        FileOutcome::Loaded(loaded) => {
            emit_loaded(metrics, candidate, &loaded);
            let moved = lifecycle::after_loaded(
                settings,
                metrics,
                &candidate.path,
                &loaded.read,
                loaded.file_id,
            );
            Some((loaded.file_id, moved))
        }
        FileOutcome::Failed {
            file_id,
            failure,
            read,
        } => {
            FileFailed {
                name: &candidate.name,
                failure: &failure,
            }
            .emit(metrics);
            let moved = lifecycle::after_failed(settings, metrics, &candidate.path, &read, file_id);
            Some((file_id, moved))
        }
        FileOutcome::AlreadyKnown {
            file_id,
            status,
            read,
        } => {
            FileAlreadyLoaded {
                name: &candidate.name,
                file_id,
                status,
            }
            .emit(metrics);
            let moved = if status == LedgerStatus::Failed {
                lifecycle::after_failed(settings, metrics, &candidate.path, &read, file_id)
            } else {
                lifecycle::after_loaded(settings, metrics, &candidate.path, &read, file_id)
            };
            Some((file_id, moved))
        }
        FileOutcome::Busy | FileOutcome::Vanished => None,
        // Reported by the caller, once per name (see `Discovery::mark_refused`).
        FileOutcome::Refused { .. } => None,
        FileOutcome::Retry(why) => {
            FileRetried {
                name: &candidate.name,
                reason: &why,
            }
            .emit(metrics);
            None
        }
    };
    match moved {
        Some((file_id, Ok(moved))) => report_move(metrics, candidate, file_id, &moved),
        Some((_, Err(e))) => FileNotMoved {
            name: &candidate.name,
            which: UnmovedFile::Finished,
            error: &e,
        }
        .emit(metrics),
        None => {}
    }
    // Whatever happened, give the directory a moment before looking at this path again.
    skipped.insert(candidate.path.clone(), Instant::now() + SKIP_FOR);
}

/// Reports a name that no longer held the file that was read (left in place, to be loaded as a
/// new file), that was gone, or that was taken in the target directory; a move or deletion that
/// went as planned is not worth a log line of its own.
fn report_move(
    metrics: &Metrics,
    candidate: &Candidate,
    file_id: i64,
    moved: &lifecycle::Finished,
) {
    match moved {
        lifecycle::Finished::Changed(change) => FileChanged {
            name: &candidate.name,
            file_id,
            change: *change,
        }
        .emit(metrics),
        lifecycle::Finished::Gone => FileVanished {
            name: &candidate.name,
            file_id,
        }
        .emit(metrics),
        lifecycle::Finished::Moved(to) if to.file_name() != candidate.path.file_name() => {
            FileMovedAs {
                name: &candidate.name,
                file_id,
                to,
            }
            .emit();
        }
        lifecycle::Finished::Moved(_) | lifecycle::Finished::Deleted => {}
    }
}

fn emit_loaded(metrics: &Metrics, candidate: &Candidate, loaded: &LoadedFile) {
    let now = chrono::Utc::now().timestamp_micros();
    let lags: Vec<f64> = loaded
        .event_times
        .iter()
        .map(|t| (now - t).max(0) as f64 / 1e6)
        .collect();
    FileLoaded {
        name: &candidate.name,
        file_id: loaded.file_id,
        counts: loaded.counts,
        rejected_by_reason: &loaded.rejected_by_reason,
        dedup_lookups: loaded.dedup_lookups,
        bytes: candidate.size,
        latency: SystemTime::now()
            .duration_since(candidate.modified)
            .unwrap_or_default(),
        lags: &lags,
    }
    .emit(metrics);
}

/// Reports the backlog every `rescan_interval`, on its own task: done by a loader loop, it would
/// wait for that loop's transaction, and the backlog gauges would freeze exactly when loading is
/// slow. (Pruning the ledger stays with the first loader loop: it is rare and short.)
async fn housekeeping(
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        // A listing error is logged by the loader loops, which scan as often.
        if let Ok(scan) = shared.discovery.scan() {
            report_scan(&scan, &metrics);
            observe_backlog(&scan, &metrics);
        }
        tokio::select! {
            () = tokio::time::sleep(settings.rescan_interval) => {}
            () = cancel.cancelled() => {}
        }
    }
}

/// Files a scan saw for the first time with a modification time in the future (each is in one
/// scan's list only, whichever loop listed it first).
/// What a scan found that is not work: names holding no regular file (reported once each by
/// the scan) and files first seen with a modification time in the future.
fn report_scan(scan: &Scan, metrics: &Metrics) {
    for file in &scan.refused {
        FileRefused {
            name: &file.name,
            kind: file.kind,
            message: "listed so by the scan; left as it is, never opened",
        }
        .emit(metrics);
    }
    for file in &scan.future {
        FutureModificationTimeSeen {
            name: &file.name,
            modified: file.modified,
        }
        .emit(metrics);
    }
}

fn observe_backlog(scan: &Scan, metrics: &Metrics) {
    BacklogObserved {
        files: scan.waiting.len(),
        bytes: scan.waiting.iter().map(|c| c.size).sum(),
        oldest_landed: scan
            .waiting
            .first()
            .map_or_else(SystemTime::now, |c| c.modified),
    }
    .emit(metrics);
}

async fn prune_if_due(
    settings: &Settings,
    pool: &Pool,
    metrics: &Metrics,
    last: &mut Option<Instant>,
) {
    let Some(days) = settings.ledger_retention_days else {
        return;
    };
    if last.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
        return;
    }
    *last = Some(Instant::now());
    let pruned = match pool.get().await {
        Ok(conn) => ledger::prune(&conn, days).await,
        Err(e) => Err(anyhow::Error::new(e)),
    };
    LedgerPruned {
        result: &pruned,
        days,
    }
    .emit(metrics);
}

/// Capped exponential backoff with jitter (each delay drawn between half and all of the cap):
/// replicas that failed together do not retry in lock-step against a database coming back.
struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = rand::rng().random_range(0.5..=1.0);
        ceiling.mul_f64(jitter)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[7] >= Duration::from_secs(1), "{delays:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
