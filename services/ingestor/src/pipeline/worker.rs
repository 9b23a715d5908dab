//! The loading loops: take ready units from the source, load a batch, acknowledge its units,
//! repeat; back off on database errors; stop taking work on shutdown. Beside them, one
//! housekeeping loop reports the backlog on its own clock. The loops know a source only through
//! `crate::source::Source` (today the input directory).
//!
//! Several loops run side by side (`loaders`, default 2), each with its own connection and
//! transaction, on disjoint units (an in-process in-flight set hands each unit to one loop).
//! PostgreSQL executes one session's COPY on one core, so a second loader is what lets the
//! database use the machine's other core; `psql \copy` cannot. Replicas in other processes
//! share the work the same way through the ledger's locks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::line_size::LineSize;
use super::loader::{load_batch, units_within_bytes, FileOutcome, LoadedFile};
use crate::config::Settings;
use crate::internal_events::{
    BatchCommitted, BatchDataRefused, BatchEnded, DatabaseFailed, FileAlreadyLoaded, FileFailed,
    FileLoaded, FileNotMoved, FileRetried, LedgerPruned, LoaderLoopPanicked, LoaderStopped,
    LoadingBlocked, Metrics, UnmovedFile,
};
use crate::model::{FileFailure, Settled};
use crate::readiness::Readiness;
use crate::source::{Opened, Receipt, Source, Unit};
use crate::store::pool::{classify, reached_database, Failure};
use crate::store::presence::{Presence, SeenPresence};
use crate::store::recent_ids::CommittedIds;
use crate::store::{ledger, Pool};

/// How long a unit another replica is loading (or that could not be read) is left alone.
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
struct Shared<S: Source> {
    source: S,
    /// Units some loop is loading, by key; a std mutex, never held across an await.
    in_flight: Mutex<HashSet<Key<S>>>,
    /// Event ids the loops committed recently (duplicates of them are dropped in memory).
    committed: CommittedIds,
    /// Bytes per line loaded so far: how many units a batch takes.
    line_size: LineSize,
}

/// Runs the loader loops until `cancel` fires; each returns after its batch in flight committed
/// or failed.
///
/// # Errors
/// If a loop panicked (a bug): the others are stopped and the error reaches `main`, so the
/// process exits non-zero and gets restarted instead of limping on without a loader.
pub async fn run<S: Source>(
    settings: Arc<Settings>,
    pool: Pool,
    source: S,
    state: WorkerState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let cancel = cancel.child_token();
    let shared = Arc::new(Shared {
        source,
        in_flight: Mutex::default(),
        committed: CommittedIds::new(settings.dedup_memory_ids),
        line_size: LineSize::default(),
    });
    let mut loops = JoinSet::new();
    state.metrics.set_loaders(settings.loaders);
    loops.spawn(housekeeping(
        settings.clone(),
        shared.clone(),
        pool.clone(),
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

/// A unit's key (see `Unit::Key`).
type Key<S> = <<S as Source>::Unit as Unit>::Key;

/// One loop's handles.
struct LoopContext<S: Source> {
    index: usize,
    settings: Arc<Settings>,
    pool: Pool,
    shared: Arc<Shared<S>>,
    state: WorkerState,
    cancel: CancellationToken,
}

/// One loader loop. Its span (`loader=<index>`) is on every log line it emits, so the lines of
/// loaders working side by side can be told apart.
#[tracing::instrument(name = "loader", skip_all, fields(loader = ctx.index))]
async fn run_loop<S: Source>(ctx: LoopContext<S>) {
    let LoopContext {
        index,
        settings,
        pool,
        shared,
        state,
        cancel,
    } = ctx;
    let mut backoff = Backoff::new(settings.retry_initial, settings.retry_max);
    let mut skipped: HashMap<Key<S>, Instant> = HashMap::new();
    let mut breaker = DataErrorBreaker::default();
    let mut changes = shared.source.subscribe();
    let mut seen_presence = SeenPresence::default();
    while !cancel.is_cancelled() {
        let ready = shared.source.ready(&state.metrics);
        skipped.retain(|_, until| *until > Instant::now());
        if ready.is_empty() {
            state.readiness.nothing_to_load();
        }
        let ready: Vec<S::Unit> = ready
            .into_iter()
            .filter(|u| !skipped.contains_key(&u.key()))
            .collect();
        let stretch = Stretch {
            index,
            loops: settings.loaders,
        };
        let Some(claimed) = InFlight::take(&shared, breaker.batch(&ready), &settings, stretch)
        else {
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(settings.rescan_interval) => {}
                () = cancel.cancelled() => {}
            }
            continue;
        };
        state
            .presence
            .before_batch(
                &mut seen_presence,
                &shared.committed,
                &state.metrics,
                &cancel,
            )
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
                for (unit, outcome) in &outcomes {
                    if let FileOutcome::Loaded { loaded, .. } = outcome {
                        shared.line_size.learn(unit.size(), loaded.counts.lines);
                    }
                }
                // Units the batch ended before (its row limit, or shutdown): opened, never
                // claimed. Said so, a source stops counting them as being loaded (a Kafka
                // consumer giving up a partition waits for its ranges in flight); they are not
                // skipped, but simply next.
                for unit in &batch[outcomes.len()..] {
                    acknowledge(&shared.source, &state.metrics, unit, Settled::Untouched);
                }
                for (unit, outcome) in outcomes {
                    finish(&shared.source, &state.metrics, &unit, outcome, &mut skipped);
                }
            }
            Err(error) => {
                let failure = classify(&error);
                if failure == Failure::RowData {
                    state.readiness.data_refused();
                    // The database is up but refuses some file's rows: narrow it down to the
                    // file and set that file aside, instead of retrying the batch forever.
                    let source = &shared.source;
                    set_aside_refused(
                        &settings,
                        &pool,
                        source,
                        &state,
                        &mut breaker,
                        batch,
                        &error,
                    )
                    .await;
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

/// A batch whose data PostgreSQL refused: several units are retried one by one; a unit that
/// is refused alone (three times in a row) is quarantined.
async fn set_aside_refused<S: Source>(
    settings: &Settings,
    pool: &Pool,
    source: &S,
    state: &WorkerState,
    breaker: &mut DataErrorBreaker<Key<S>>,
    batch: &[S::Unit],
    error: &anyhow::Error,
) {
    match breaker.failed(batch) {
        Some(culprit) => quarantine(settings, pool, source, &state.metrics, &culprit, error).await,
        None => BatchDataRefused {
            error,
            files: batch.len(),
        }
        .emit(&state.metrics),
    }
}

/// Units one loop has taken; released (for any loop to take again) when dropped.
struct InFlight<'a, S: Source> {
    shared: &'a Shared<S>,
    files: Vec<S::Unit>,
}

impl<'a, S: Source> InFlight<'a, S> {
    /// Takes the ready units no other loop is loading, from where `stretch` starts, that one
    /// batch loads (up to `batch_max_files`, within `batch_max_bytes`, and as many as are
    /// expected to reach `batch_max_rows`, see [`LineSize`]); `None` if none. Taking more would
    /// keep units the batch leaves out from the other loops until it commits, and open them for
    /// nothing.
    fn take(
        shared: &'a Shared<S>,
        ready: &[S::Unit],
        settings: &Settings,
        stretch: Stretch,
    ) -> Option<Self> {
        let mut in_flight = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let free: Vec<&S::Unit> = ready
            .iter()
            .filter(|u| !in_flight.contains(&u.key()))
            .collect();
        let from_front = Self::batch_size(shared, &free, settings);
        let start = stretch.start(free.len(), from_front);
        let files: Vec<S::Unit> = free[start..]
            .iter()
            .take(Self::batch_size(shared, &free[start..], settings))
            .map(|u| (*u).clone())
            .collect();
        if files.is_empty() {
            return None;
        }
        in_flight.extend(files.iter().map(Unit::key));
        Some(InFlight { shared, files })
    }

    /// How many of `free`, from its start, one batch takes: up to `batch_max_files`, within
    /// `batch_max_bytes`, and as many as are expected to reach `batch_max_rows`.
    fn batch_size(shared: &Shared<S>, free: &[&S::Unit], settings: &Settings) -> usize {
        let sizes = || free.iter().take(settings.batch_max_files).map(|u| u.size());
        let fitting = units_within_bytes(sizes(), settings.batch_max_bytes);
        shared
            .line_size
            .expected_units(sizes().take(fitting), settings.batch_max_rows)
    }

    fn files(&self) -> &[S::Unit] {
        &self.files
    }
}

impl<S: Source> Drop for InFlight<'_, S> {
    fn drop(&mut self) {
        let mut in_flight = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for unit in &self.files {
            in_flight.remove(&unit.key());
        }
    }
}

/// Which stretch of the ready units (oldest first) a loop takes its batches from. When they are
/// more than one batch for each loop (a backlog), loop `index` of `loops` starts `index / loops`
/// of the way in, so that the loops work on distant files; otherwise every loop takes from the
/// oldest. Neighbouring files share event ids (a producer's retries, overlapping exports):
/// loaded side by side in two open transactions, the second insert of an id waits for the
/// first transaction, and its file is deferred (`conflict_wait_ms`) and read again later.
#[derive(Debug, Clone, Copy)]
struct Stretch {
    index: usize,
    loops: usize,
}

impl Stretch {
    /// Where this loop starts among `free` units not taken by another loop, of which one batch
    /// takes `batch` from the oldest.
    fn start(self, free: usize, batch: usize) -> usize {
        if free >= batch.max(1).saturating_mul(self.loops) {
            free * self.index / self.loops.max(1)
        } else {
            0
        }
    }
}

/// Narrows a batch whose data PostgreSQL refuses down to the one unit responsible.
struct DataErrorBreaker<K> {
    /// Single-unit batches still to run before batching resumes.
    isolate: usize,
    /// The unit that failed alone, and how many times in a row.
    strikes: Option<(K, u32)>,
}

impl<K> Default for DataErrorBreaker<K> {
    fn default() -> Self {
        DataErrorBreaker {
            isolate: 0,
            strikes: None,
        }
    }
}

impl<K: PartialEq> DataErrorBreaker<K> {
    fn batch<'a, U>(&self, ready: &'a [U]) -> &'a [U] {
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

    /// Records a failed batch; returns the unit to quarantine once one is proven guilty.
    fn failed<U: Unit<Key = K>>(&mut self, batch: &[U]) -> Option<U> {
        if batch.len() > 1 {
            self.isolate = batch.len();
            return None;
        }
        let unit = batch.first()?;
        let key = unit.key();
        let count = match &self.strikes {
            Some((struck, n)) if *struck == key => n + 1,
            _ => 1,
        };
        self.strikes = Some((key, count));
        (count >= QUARANTINE_AFTER).then(|| {
            self.strikes = None;
            unit.clone()
        })
    }
}

/// Records a unit whose rows PostgreSQL refuses as failed (`database_rejected`) and
/// acknowledges it (a file goes to the failed directory), so one such unit cannot stop the
/// service.
async fn quarantine<S: Source>(
    settings: &Settings,
    pool: &Pool,
    source: &S,
    metrics: &Metrics,
    unit: &S::Unit,
    error: &anyhow::Error,
) {
    let failure = FileFailure::DatabaseRejected(format!("{error:#}"));
    let recorded = async {
        let opening = unit.clone();
        // Opened and hashed once more: the unit recorded as failed is the unit acknowledged.
        let opened = tokio::task::spawn_blocking(move || opening.open()).await??;
        let mut conn = pool.get().await?;
        // In doubt until COMMIT answered, as in `load_batch`.
        conn.doubt();
        let tx = conn.transaction().await?;
        let file_id = opened
            .record_failed(&tx, &settings.instance_id, &failure)
            .await?;
        tx.commit().await?;
        conn.settle();
        anyhow::Ok((file_id, opened.receipt()))
    };
    match recorded.await {
        Ok((file_id, read)) => {
            FileFailed {
                name: unit.name(),
                failure: &failure,
            }
            .emit(metrics);
            let settled = Settled::Failed {
                file_id,
                read: &read,
            };
            if let Err(e) = source.acknowledge(unit, settled, metrics) {
                FileNotMoved {
                    name: unit.name(),
                    which: UnmovedFile::Quarantined,
                    error: &e,
                }
                .emit(metrics);
            }
        }
        Err(e) => FileNotMoved {
            name: unit.name(),
            which: UnmovedFile::NotQuarantined,
            error: &e,
        }
        .emit(metrics),
    }
}

/// After COMMIT: report the unit's outcome and have its source acknowledge it.
fn finish<S: Source>(
    source: &S,
    metrics: &Metrics,
    unit: &S::Unit,
    outcome: FileOutcome<Receipt<S::Unit>>,
    skipped: &mut HashMap<Key<S>, Instant>,
) {
    let name = unit.name();
    match &outcome {
        FileOutcome::Loaded { loaded, .. } => emit_loaded(metrics, unit, loaded),
        FileOutcome::Failed { failure, .. } => FileFailed { name, failure }.emit(metrics),
        FileOutcome::AlreadyKnown {
            file_id, status, ..
        } => FileAlreadyLoaded {
            name,
            file_id: *file_id,
            status: *status,
        }
        .emit(metrics),
        FileOutcome::Retry(why) => FileRetried { name, reason: why }.emit(metrics),
        // A refusal is the source's to report (once per name), in its acknowledgement.
        FileOutcome::Busy | FileOutcome::Vanished | FileOutcome::Refused { .. } => {}
    }
    acknowledge(source, metrics, unit, outcome.settled());
    // Whatever happened to it, give the source a moment before offering this unit again.
    skipped.insert(unit.key(), Instant::now() + SKIP_FOR);
}

/// Has the source acknowledge a unit; a unit it cannot move is logged and counted.
fn acknowledge<S: Source>(
    source: &S,
    metrics: &Metrics,
    unit: &S::Unit,
    settled: Settled<'_, Receipt<S::Unit>>,
) {
    if let Err(e) = source.acknowledge(unit, settled, metrics) {
        FileNotMoved {
            name: unit.name(),
            which: UnmovedFile::Finished,
            error: &e,
        }
        .emit(metrics);
    }
}

fn emit_loaded(metrics: &Metrics, unit: &impl Unit, loaded: &LoadedFile) {
    let now = chrono::Utc::now().timestamp_micros();
    let lags: Vec<f64> = loaded
        .event_times
        .iter()
        .map(|t| (now - t).max(0) as f64 / 1e6)
        .collect();
    FileLoaded {
        name: unit.name(),
        file_id: loaded.file_id,
        counts: loaded.counts,
        rejected_by_reason: &loaded.rejected_by_reason,
        dedup_lookups: loaded.dedup_lookups,
        bytes: unit.size(),
        latency: SystemTime::now()
            .duration_since(unit.landed())
            .unwrap_or_default(),
        lags: &lags,
    }
    .emit(metrics);
}

/// The work beside loading, on its own task: the backlog gauges every `rescan_interval`, and
/// ledger pruning when due. Done by a loader loop, they would wait for that loop's transaction
/// (the gauges would freeze exactly when loading is slow), and a prune would hold up a batch.
async fn housekeeping<S: Source>(
    settings: Arc<Settings>,
    shared: Arc<Shared<S>>,
    pool: Pool,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut last_prune: Option<Instant> = None;
    while !cancel.is_cancelled() {
        shared.source.report_backlog(&metrics);
        prune_if_due(&settings, &pool, &metrics, &mut last_prune).await;
        tokio::select! {
            () = tokio::time::sleep(settings.rescan_interval) => {}
            () = cancel.cancelled() => {}
        }
    }
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
    fn loops_start_apart_on_a_backlog_and_take_a_few_units_oldest_first() {
        let (first, second) = (
            Stretch { index: 0, loops: 2 },
            Stretch { index: 1, loops: 2 },
        );
        // A backlog of 100 files, 5 to a batch: the second loop starts half-way.
        assert_eq!((first.start(100, 5), second.start(100, 5)), (0, 50));
        assert_eq!(Stretch { index: 2, loops: 3 }.start(30, 10), 20);
        // Fewer than a batch per loop: both take the oldest (the second loop takes what the
        // first one left, as one batch).
        assert_eq!((first.start(9, 5), second.start(9, 5)), (0, 0));
        assert_eq!((second.start(1, 1), second.start(0, 0)), (0, 0));
    }

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
