//! Everything the ingestor reports about its work, declared in one place: each event is a struct
//! whose `emit` writes the log line and moves the metrics together, so a call site cannot log
//! without counting or count without logging.
//!
//! Metric names follow `ingestor_<what>_<unit>`; label values come from bounded sets (outcomes,
//! reason codes), never from file names or error text.

use std::time::{Duration, SystemTime};

use event_contract::RejectReason;
use prometheus::{
    Counter, Encoder, Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use service_support::{counter_vec, histogram, register, register_process_metrics};

mod kafka;

pub use kafka::{
    KafkaBacklogObserved, KafkaBrokerReachable, KafkaBrokerUnreachable, KafkaClientLog,
    KafkaConsumeFailed, KafkaPartitionsAssigned, KafkaPartitionsRevoked, KafkaPositionsUnavailable,
    KafkaRangeOutOfStep, KafkaRangeSettled, KafkaSeekFailed, KafkaStoredOffsetMoved,
    KAFKA_BATCH_OUTCOMES, KAFKA_REBALANCE_KINDS,
};

use crate::model::{
    DatabaseIdentity, DirectoryClaim, FileChange, FileFailure, LedgerStatus, LineCounts,
};

/// Latency buckets in seconds: 2.5 ms to 1 h, dense where a healthy ingestor commits (10 to
/// 50 ms) so that its quantiles read close to the ledger's exact ones, and reaching an hour so
/// that in an outage the quantiles keep climbing with it instead of flat-lining at the top
/// finite bucket.
const LATENCY_BUCKETS: &[f64] = &[
    0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];
/// Event-time lag buckets in seconds: a file's events are up to its writing time old (100 ms at
/// 10k events/s in 1,000-row files, a second at 1k), and late events are minutes old by design.
const LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 3600.0,
];

/// Outcome label values of `ingestor_files_total`.
pub const FILE_OUTCOMES: [&str; 3] = ["loaded", "failed", "already_loaded"];
/// Outcome label values of `ingestor_rows_total`.
pub const ROW_OUTCOMES: [&str; 3] = ["accepted", "duplicate", "rejected"];
/// Fault label values of `ingestor_move_faults_total`: what a move after COMMIT found missing.
pub const MOVE_FAULTS: [&str; 2] = ["directory_missing", "vanished"];
/// Kind label values of `ingestor_files_refused_total`: what a name held when it was opened.
pub const REFUSALS: [&str; 2] = ["symlink", "not_regular_file"];

/// The ingestor's metrics, registered in a registry the service owns.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    files: IntCounterVec,
    files_failed: IntCounterVec,
    files_changed: IntCounterVec,
    move_faults: IntCounterVec,
    files_refused: IntCounterVec,
    future_mtimes: IntCounter,
    rows: IntCounterVec,
    rows_rejected: IntCounterVec,
    bytes_read: IntCounter,
    file_latency: Histogram,
    event_lag: Histogram,
    transaction_duration: Histogram,
    db_errors: IntCounter,
    loading_blocked: IntCounter,
    last_commit: Gauge,
    loaders: IntGauge,
    loader_busy: Counter,
    database_up: IntGauge,
    connections_discarded: IntCounter,
    dedup_lookups: IntCounter,
    backlog_files: IntGauge,
    backlog_bytes: IntGauge,
    oldest_file_landed: Gauge,
    ready: IntGauge,
    pool_connections: IntGauge,
    pool_idle_connections: IntGauge,
    pool_max_connections: IntGauge,
    pool_waiting: IntGauge,
    pool_wait: Counter,
    http: HttpMetrics,
    kafka: kafka::KafkaMetrics,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// Only on a programming error (a duplicate or malformed metric name).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reasons: Vec<&str> = RejectReason::ALL.iter().map(|r| r.code()).collect();
        let changes: Vec<&str> = FileChange::ALL.iter().map(|c| c.code()).collect();
        let failures: Vec<&str> = FileFailure::codes().collect();
        let build_info = IntGauge::with_opts(
            Opts::new("ingestor_build_info", "Build information; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build_info.set(1);
        register(&registry, build_info)?;
        register_process_metrics(&registry)?;
        let metrics = Metrics {
            files: counter_vec(
                &registry,
                "ingestor_files_total",
                "Files finished, by outcome.",
                "outcome",
                &FILE_OUTCOMES,
            )?,
            files_failed: counter_vec(
                &registry,
                "ingestor_files_failed_total",
                "Files that could not be loaded as a whole and were moved to the failed directory, by reason code.",
                "reason",
                &failures,
            )?,
            files_changed: counter_vec(
                &registry,
                "ingestor_files_changed_total",
                "Files whose name no longer held the file that was read when it was time to move it (replaced by another file, or modified since); left in place to be loaded as new files.",
                "change",
                &changes,
            )?,
            move_faults: counter_vec(
                &registry,
                "ingestor_move_faults_total",
                "Moves after COMMIT that found something missing: the archive or failed directory (recreated, then the move went ahead), or the file's name (gone before it could be moved).",
                "fault",
                &MOVE_FAULTS,
            )?,
            files_refused: counter_vec(
                &registry,
                "ingestor_files_refused_total",
                "Names that held a symbolic link or something other than a regular file (a FIFO, a device) when they were opened for loading; nothing was read from them.",
                "kind",
                &REFUSALS,
            )?,
            future_mtimes: register(
                &registry,
                IntCounter::new(
                    "ingestor_files_future_mtime_total",
                    "Files first seen with a modification time in the future; they count as landed when first seen.",
                )?,
            )?,
            rows: counter_vec(
                &registry,
                "ingestor_rows_total",
                "Data rows of finished files, by outcome.",
                "outcome",
                &ROW_OUTCOMES,
            )?,
            rows_rejected: counter_vec(
                &registry,
                "ingestor_rows_rejected_total",
                "Rejected rows, by reason code.",
                "reason",
                &reasons,
            )?,
            bytes_read: register(
                &registry,
                IntCounter::new(
                    "ingestor_read_bytes_total",
                    "Bytes of event files read and committed.",
                )?,
            )?,
            file_latency: histogram(
                &registry,
                "ingestor_file_commit_latency_seconds",
                "Time from a file landing (its mtime) to its commit.",
                LATENCY_BUCKETS,
            )?,
            event_lag: histogram(
                &registry,
                "ingestor_event_commit_lag_seconds",
                "Time from a valid event's timestamp (accepted or duplicate; a sample of up to 4,096 per file) to its commit.",
                LAG_BUCKETS,
            )?,
            transaction_duration: histogram(
                &registry,
                "ingestor_transaction_duration_seconds",
                "Duration of a loading transaction (claim, COPY, commit).",
                LATENCY_BUCKETS,
            )?,
            db_errors: register(
                &registry,
                IntCounter::new(
                    "ingestor_database_errors_total",
                    "Database errors that rolled a transaction back.",
                )?,
            )?,
            last_commit: register(
                &registry,
                Gauge::new(
                    "ingestor_last_commit_timestamp_seconds",
                    "When a loading transaction last committed (Unix time); the start-up time before the first.",
                )?,
            )?,
            loaders: register(
                &registry,
                IntGauge::new(
                    "ingestor_loaders",
                    "Loader loops running side by side (the `loaders` setting).",
                )?,
            )?,
            loader_busy: register(
                &registry,
                Counter::new(
                    "ingestor_loader_busy_seconds_total",
                    "Time the loader loops spent loading batches (committed or not), added when each batch ends; its rate divided by ingestor_loaders is the loaders' busy ratio.",
                )?,
            )?,
            database_up: register(
                &registry,
                IntGauge::new(
                    "ingestor_database_up",
                    "1 when the last loading transaction or readiness check reached the database, 0 when it could not.",
                )?,
            )?,
            loading_blocked: register(
                &registry,
                IntCounter::new(
                    "ingestor_loading_blocked_total",
                    "Transactions rolled back by a database error no retry fixes (a missing table, column or privilege, a setting PostgreSQL rejects); /readyz answers 503 with the reason until one commits.",
                )?,
            )?,
            connections_discarded: register(
                &registry,
                IntCounter::new(
                    "ingestor_database_connections_discarded_total",
                    "Database connections closed instead of being returned to the pool, because an error or a cancellation left their protocol state in doubt (or the server had closed them), sampled at scrape.",
                )?,
            )?,
            dedup_lookups: register(
                &registry,
                IntCounter::new(
                    "ingestor_dedup_lookups_total",
                    "Chunks whose event ids were looked up in the database: after the primary key found a duplicate the in-memory id memory did not know, and for the chunks after it while such duplicates keep coming.",
                )?,
            )?,
            backlog_files: register(
                &registry,
                IntGauge::new(
                    "ingestor_backlog_files",
                    "Files waiting in the input directory.",
                )?,
            )?,
            backlog_bytes: register(
                &registry,
                IntGauge::new(
                    "ingestor_backlog_bytes",
                    "Bytes waiting in the input directory.",
                )?,
            )?,
            oldest_file_landed: register(
                &registry,
                Gauge::new(
                    "ingestor_backlog_oldest_file_timestamp_seconds",
                    "When the oldest waiting file landed (its mtime, Unix time), or the last scan's time when no file waits: every file that landed before it has been taken.",
                )?,
            )?,
            ready: register(
                &registry,
                IntGauge::new(
                    "ingestor_ready",
                    "1 when the database answers and the watcher runs.",
                )?,
            )?,
            pool_connections: register(
                &registry,
                IntGauge::new(
                    "ingestor_database_pool_connections",
                    "Connections the database pool holds (busy and idle), at scrape time.",
                )?,
            )?,
            pool_idle_connections: register(
                &registry,
                IntGauge::new(
                    "ingestor_database_pool_idle_connections",
                    "Idle connections in the database pool, at scrape time.",
                )?,
            )?,
            pool_max_connections: register(
                &registry,
                IntGauge::new(
                    "ingestor_database_pool_max_connections",
                    "The most connections the database pool opens (the `pool_size` setting).",
                )?,
            )?,
            pool_waiting: register(
                &registry,
                IntGauge::new(
                    "ingestor_database_pool_waiting_checkouts",
                    "Tasks waiting for a pooled database connection, at scrape time.",
                )?,
            )?,
            pool_wait: register(
                &registry,
                Counter::new(
                    "ingestor_database_pool_wait_seconds_total",
                    "Time checkouts spent waiting for a pooled database connection (bb8's total), sampled at scrape.",
                )?,
            )?,
            http: HttpMetrics::new(&registry)?,
            kafka: kafka::KafkaMetrics::new(&registry)?,
            registry,
        };
        // Until the first commit, the time since start-up is the time without one.
        metrics.last_commit.set(unix_seconds(SystemTime::now()));
        Ok(metrics)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only for malformed metrics, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Records readiness as seen by /readyz.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Records whether the database answered the last loading transaction or readiness check.
    pub fn set_database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// Records how many loader loops run.
    pub fn set_loaders(&self, loaders: usize) {
        self.loaders.set(i64::try_from(loaders).unwrap_or(i64::MAX));
    }
}

/// A file committed with its rows.
pub struct FileLoaded<'a> {
    /// File name.
    pub name: &'a str,
    /// Ledger id.
    pub file_id: i64,
    /// Line accounting.
    pub counts: LineCounts,
    /// Rejections by reason.
    pub rejected_by_reason: &'a [(RejectReason, u64)],
    /// File size.
    pub bytes: u64,
    /// Landing (mtime) to commit.
    pub latency: Duration,
    /// Event timestamps (seconds ago at commit) of accepted rows, for the lag histogram.
    pub lags: &'a [f64],
    /// Chunks whose ids were looked up in the database.
    pub dedup_lookups: u64,
}

impl FileLoaded<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        let c = self.counts;
        tracing::info!(
            file = self.name,
            file_id = self.file_id,
            lines = c.lines,
            accepted = c.accepted,
            duplicates = c.duplicates,
            rejected = c.rejected,
            latency_ms = self.latency.as_millis() as u64,
            "File loaded"
        );
        m.files.with_label_values(&["loaded"]).inc();
        m.dedup_lookups.inc_by(self.dedup_lookups);
        m.rows.with_label_values(&["accepted"]).inc_by(c.accepted);
        m.rows
            .with_label_values(&["duplicate"])
            .inc_by(c.duplicates);
        m.rows.with_label_values(&["rejected"]).inc_by(c.rejected);
        for (reason, n) in self.rejected_by_reason {
            m.rows_rejected
                .with_label_values(&[reason.code()])
                .inc_by(*n);
        }
        m.bytes_read.inc_by(self.bytes);
        m.file_latency.observe(self.latency.as_secs_f64());
        // Thousands of samples per file: counted locally, then added to the shared histogram
        // in one go (each shared observation is a few atomic operations).
        let lags = m.event_lag.local();
        for lag in self.lags {
            lags.observe(*lag);
        }
        lags.flush();
    }
}

/// A file that cannot be loaded as a whole, recorded in the ledger and moved aside.
pub struct FileFailed<'a> {
    /// File name.
    pub name: &'a str,
    /// Why (its code is the log's `reason`).
    pub failure: &'a FileFailure,
}

impl FileFailed<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            file = self.name,
            reason = self.failure.code(),
            message = %self.failure,
            "File failed; moved to the failed directory"
        );
        m.files.with_label_values(&["failed"]).inc();
        m.files_failed
            .with_label_values(&[self.failure.code()])
            .inc();
    }
}

/// A file whose content the ledger already knows (re-delivered, or archived before a crash).
pub struct FileAlreadyLoaded<'a> {
    /// File name.
    pub name: &'a str,
    /// Ledger id of the earlier load.
    pub file_id: i64,
    /// Its ledger status.
    pub status: LedgerStatus,
}

impl FileAlreadyLoaded<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::info!(
            file = self.name,
            file_id = self.file_id,
            status = %self.status,
            "File content already in the ledger; not loaded again"
        );
        m.files.with_label_values(&["already_loaded"]).inc();
    }
}

/// A file's name no longer held what was read through it when it was time to move it: a
/// producer renamed another file onto the name, or wrote to the file, after the read. What was
/// read is committed; the name is left in place, so the bytes nobody loaded yet are loaded as a
/// new file (rows already stored count as duplicates) instead of being archived unloaded.
pub struct FileChanged<'a> {
    /// File name.
    pub name: &'a str,
    /// Ledger id of what was read (loaded, failed, or known from before).
    pub file_id: i64,
    /// How the name differs.
    pub change: FileChange,
}

impl FileChanged<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            file = self.name,
            file_id = self.file_id,
            change = self.change.code(),
            "File changed after it was read; left in place to be loaded as a new file"
        );
        m.files_changed
            .with_label_values(&[self.change.code()])
            .inc();
    }
}

/// The archive or failed directory was missing when a file was to be moved into it (deleted
/// by hand, or together with the input directory it lives in), and was created again. Without
/// this, every move into it fails with "not found", and the loaded files stay in the input
/// directory to be claimed again and again.
pub struct DirectoryRecreated<'a> {
    /// The directory created again.
    pub dir: &'a std::path::Path,
}

impl DirectoryRecreated<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            dir = %self.dir.display(),
            "Directory for finished files was missing; created it again"
        );
        m.move_faults
            .with_label_values(&["directory_missing"])
            .inc();
    }
}

/// A finished file's name was gone when it was time to move it: another replica moved it, or
/// someone removed it or the directory holding it. The ledger holds its outcome either way,
/// but a name that disappears under the ingestor is worth knowing about: it is never counted as
/// a move that succeeded.
pub struct FileVanished<'a> {
    /// File name.
    pub name: &'a str,
    /// Ledger id of its content.
    pub file_id: i64,
}

impl FileVanished<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            file = self.name,
            file_id = self.file_id,
            "File was gone when it was time to move it (another replica moved it, or it or its directory was removed)"
        );
        m.move_faults.with_label_values(&["vanished"]).inc();
    }
}

/// An event file name held a symbolic link or something else (a FIFO, a socket, a device, a
/// directory): already when the scan listed it, or by the time it was opened for loading (a
/// swap). It was refused without reading a byte, so a link to a file outside the directory is
/// never stored and a FIFO or `/dev/zero` cannot hold a loader. The name is left as it is and
/// reported once while it holds the same kind of thing.
pub struct FileRefused<'a> {
    /// File name.
    pub name: &'a str,
    /// One of [`REFUSALS`].
    pub kind: &'static str,
    /// What opening it reported.
    pub message: &'a str,
}

impl FileRefused<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            file = self.name,
            kind = self.kind,
            reason = self.message,
            "File refused: its name holds a symbolic link or no regular file (a FIFO, a socket, a device, a directory); nothing of it was read"
        );
        m.files_refused.with_label_values(&[self.kind]).inc();
    }
}

/// A finished file was moved under a name other than its own, because its name was taken in
/// the target directory: the ledger id (and a number) was added, and a name that would then
/// exceed 255 bytes had its stem shortened. Nothing there is ever replaced.
pub struct FileMovedAs<'a> {
    /// File name in the input directory (and in the ledger).
    pub name: &'a str,
    /// Ledger id.
    pub file_id: i64,
    /// Where it went.
    pub to: &'a std::path::Path,
}

impl FileMovedAs<'_> {
    /// Logs.
    pub fn emit(&self) {
        tracing::info!(
            file = self.name,
            file_id = self.file_id,
            moved_to = %self.to.display(),
            "File moved under another name; its own was taken"
        );
    }
}

/// A file was seen with a modification time in the future: the producer's clock is ahead, or a
/// copy kept a future time. Its landing time (for settling, age and latency) is when it was
/// first seen instead; measured from its mtime it would never settle, and show an age of 0.
pub struct FutureModificationTimeSeen<'a> {
    /// File name.
    pub name: &'a str,
    /// Its modification time.
    pub modified: std::time::SystemTime,
}

impl FutureModificationTimeSeen<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            file = self.name,
            mtime = %chrono::DateTime::<chrono::Utc>::from(self.modified).to_rfc3339(),
            "File has a modification time in the future; it counts as landed when first seen"
        );
        m.future_mtimes.inc();
    }
}

/// A transaction committed.
pub struct BatchCommitted {
    /// Files in it.
    pub files: usize,
    /// Its duration.
    pub duration: Duration,
}

impl BatchCommitted {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            files = self.files,
            duration_ms = self.duration.as_millis() as u64,
            "Transaction committed"
        );
        m.transaction_duration.observe(self.duration.as_secs_f64());
        m.last_commit.set(unix_seconds(SystemTime::now()));
    }
}

/// A loader loop finished a batch, whatever its outcome: the time it was busy.
pub struct BatchEnded {
    /// From taking the files to the commit or rollback.
    pub busy: Duration,
}

impl BatchEnded {
    /// Counts (the outcome has its own event and log line).
    pub fn emit(&self, m: &Metrics) {
        m.loader_busy.inc_by(self.busy.as_secs_f64());
    }
}

/// Seconds since the Unix epoch (0 for a time before it).
fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A transaction rolled back by a database error; it will be retried.
pub struct DatabaseFailed<'a> {
    /// The error with its cause chain.
    pub error: &'a anyhow::Error,
    /// Delay before the retry.
    pub retry_in: Duration,
}

impl DatabaseFailed<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        // The message carries the whole chain: the outermost context alone ("no database
        // connection available") would hide the cause (a wrong password, too many clients).
        tracing::warn!(error.message = %format!("{:#}", self.error), error.cause_chain = ?self.error, retry_in_ms = self.retry_in.as_millis() as u64, "Database error; transaction rolled back, will retry");
        m.db_errors.inc();
    }
}

/// A transaction rolled back by a database error no retry fixes: the schema, the grants or a
/// setting must change. Logged as an ERROR (an operator must act); the loader backs off and
/// retries, and `/readyz` answers 503 with `reason` until a batch commits.
pub struct LoadingBlocked<'a> {
    /// The error with its cause chain.
    pub error: &'a anyhow::Error,
    /// What `/readyz` says: PostgreSQL's message, its SQLSTATE and what to do.
    pub reason: &'a str,
    /// Delay before the retry.
    pub retry_in: Duration,
}

impl LoadingBlocked<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::error!(reason = self.reason, error.message = %self.error, error.cause_chain = ?self.error, retry_in_ms = self.retry_in.as_millis() as u64, "Loading fails for a reason no retry fixes; not ready until it is fixed");
        m.db_errors.inc();
        m.loading_blocked.inc();
    }
}

/// The input directory as seen by the last scan.
pub struct BacklogObserved {
    /// Files waiting.
    pub files: usize,
    /// Bytes waiting.
    pub bytes: u64,
    /// When the oldest waiting file landed, or when the scan ran if none waits. A time rather
    /// than an age, so that `time() - it` keeps growing on a dashboard even if scans stopped.
    pub oldest_landed: SystemTime,
}

impl BacklogObserved {
    /// Sets the gauges.
    pub fn emit(&self, m: &Metrics) {
        m.backlog_files
            .set(i64::try_from(self.files).unwrap_or(i64::MAX));
        m.backlog_bytes
            .set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        m.oldest_file_landed.set(unix_seconds(self.oldest_landed));
    }
}

/// The database pool as seen at a `/metrics` scrape: sampled on demand rather than on every
/// checkout, so the hot path pays nothing for it.
pub struct PoolObserved {
    /// Connections the pool holds, busy or idle.
    pub connections: u32,
    /// Connections waiting in the pool, unused.
    pub idle_connections: u32,
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// Checkouts waiting for a connection.
    pub waiting_checkouts: usize,
    /// Time checkouts spent waiting since start.
    pub wait_time: Duration,
    /// Connections the pool closed as broken since start (see `store::pool::Connection`).
    pub discarded_connections: u64,
}

impl PoolObserved {
    /// Sets the gauges.
    pub fn emit(&self, m: &Metrics) {
        m.pool_connections.set(i64::from(self.connections));
        m.pool_idle_connections
            .set(i64::from(self.idle_connections));
        m.pool_max_connections.set(i64::from(self.max_connections));
        m.pool_waiting
            .set(i64::try_from(self.waiting_checkouts).unwrap_or(i64::MAX));
        // bb8 keeps the totals; the counters catch up with them (scrapes may run concurrently,
        // so they only ever move forward).
        let behind = self
            .discarded_connections
            .saturating_sub(m.connections_discarded.get());
        m.connections_discarded.inc_by(behind);
        let waited = self.wait_time.as_secs_f64() - m.pool_wait.get();
        if waited > 0.0 {
            m.pool_wait.inc_by(waited);
        }
    }
}

/// Timeout label values of `ingestor_http_connections_timed_out_total`: a request head that did
/// not arrive in time (also an idle keep-alive connection), or a connection on which nothing
/// moved.
pub const HTTP_TIMEOUTS: [&str; 2] = ["header", "idle"];

/// The HTTP listener's own counters (see `crate::http`).
#[derive(Clone)]
struct HttpMetrics {
    refused: IntCounter,
    timed_out: IntCounterVec,
    abandoned: IntCounter,
    accept_errors: IntCounter,
}

impl HttpMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        Ok(HttpMetrics {
            refused: register(
                registry,
                IntCounter::new(
                    "ingestor_http_connections_refused_total",
                    "HTTP connections answered 503 and closed at once because the connection limit was reached.",
                )?,
            )?,
            timed_out: counter_vec(
                registry,
                "ingestor_http_connections_timed_out_total",
                "HTTP connections closed by a timeout: no complete request head in time (also an idle keep-alive connection), or no byte moved either way.",
                "timeout",
                &HTTP_TIMEOUTS,
            )?,
            abandoned: register(
                registry,
                IntCounter::new(
                    "ingestor_http_connections_abandoned_total",
                    "HTTP connections still open when the drain timeout ran out at shutdown, closed without an answer.",
                )?,
            )?,
            accept_errors: register(
                registry,
                IntCounter::new(
                    "ingestor_http_accept_errors_total",
                    "Failures to accept an HTTP connection other than the connection's own (descriptors or memory exhausted).",
                )?,
            )?,
        })
    }
}

/// An HTTP connection beyond the limit was answered 503 and closed. Logged at debug only: a
/// flood of them would otherwise flood the log; the counter shows it.
pub struct HttpConnectionRefused {
    /// The connection limit in force.
    pub limit: usize,
}

impl HttpConnectionRefused {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            limit = self.limit,
            "HTTP connection refused; the connection limit is reached"
        );
        m.http.refused.inc();
    }
}

/// An HTTP connection was closed by one of its timeouts (label from [`HTTP_TIMEOUTS`]).
pub struct HttpConnectionTimedOut {
    /// Which timeout: `header` or `idle`.
    pub timeout: &'static str,
}

impl HttpConnectionTimedOut {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            timeout = self.timeout,
            "HTTP connection closed by a timeout"
        );
        m.http.timed_out.with_label_values(&[self.timeout]).inc();
    }
}

/// At shutdown, HTTP connections were still open when the drain timeout ran out; they are
/// closed without an answer so that the process exits on time.
pub struct HttpConnectionsAbandoned {
    /// How many.
    pub connections: usize,
    /// The drain timeout that ran out.
    pub drain: Duration,
}

impl HttpConnectionsAbandoned {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            connections = self.connections,
            drain_timeout_ms = self.drain.as_millis() as u64,
            "Drain timeout reached; closing HTTP connections still open"
        );
        m.http.abandoned.inc_by(self.connections as u64);
    }
}

/// Accepting an HTTP connection failed for a reason other than the connection's own (no free
/// descriptor, no memory); the listener pauses briefly and tries again.
pub struct HttpAcceptFailed<'a> {
    /// The error.
    pub error: &'a std::io::Error,
}

impl HttpAcceptFailed<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(error.message = %self.error, "Cannot accept an HTTP connection; retrying shortly");
        m.http.accept_errors.inc();
    }
}

/// The input directory was claimed for this ingestor's database (see `crate::claim`): its
/// marker was written, or found naming this database.
pub struct DirectoryClaimed<'a> {
    /// The input directory.
    pub dir: &'a std::path::Path,
    /// This ingestor's database.
    pub identity: &'a DatabaseIdentity,
    /// Written or confirmed.
    pub claim: DirectoryClaim,
}

impl DirectoryClaimed<'_> {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        // `ingestor_database_up` is `Readiness`'s to set: this answer is already old when the
        // marker is written, and setting it here raced a readiness probe that saw the database
        // gone meanwhile.
        tracing::info!(
            dir = %self.dir.display(),
            database = %self.identity.database,
            system_identifier = self.identity.system_identifier,
            marker = self.claim.code(),
            "Input directory claimed for this database; loading starts"
        );
    }
}

/// The database could not be asked for its identity before loading starts (it is down, or
/// refuses the connection): nothing is loaded until it answers, since the input directory may
/// belong to another database.
pub struct DatabaseIdentityUnavailable<'a> {
    /// The error with its cause chain.
    pub error: &'a anyhow::Error,
    /// Delay before the next attempt.
    pub retry_in: Duration,
}

impl DatabaseIdentityUnavailable<'_> {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        tracing::warn!(error.message = %format!("{:#}", self.error), retry_in_ms = self.retry_in.as_millis() as u64, "Database unavailable; loading starts once it answers");
    }
}

/// A loader loop panicked (a bug): the others are stopped and the process exits non-zero.
pub struct LoaderLoopPanicked<'a> {
    /// The panic, as the task's join error.
    pub error: &'a tokio::task::JoinError,
}

impl LoaderLoopPanicked<'_> {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        tracing::error!(error = %self.error, "A loader loop panicked; stopping the others");
    }
}

/// Every loader loop has returned (shutdown, or a loop panicked).
pub struct LoaderStopped;

impl LoaderStopped {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        tracing::info!("Loader stopped");
    }
}

/// The input directory could not be listed; the scan finds nothing this time.
pub struct DirectoryUnlistable<'a> {
    /// The listing's error.
    pub error: &'a std::io::Error,
}

impl DirectoryUnlistable<'_> {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        tracing::error!(error = %self.error, "Cannot list the input directory");
    }
}

/// PostgreSQL refused the data of a batch of several files: they are retried one by one, so
/// the file to blame can be set aside.
pub struct BatchDataRefused<'a> {
    /// The server's refusal.
    pub error: &'a anyhow::Error,
    /// Files in the batch.
    pub files: usize,
}

impl BatchDataRefused<'_> {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        tracing::warn!(error.message = %self.error, files = self.files, "PostgreSQL refused the data of a batch; retrying file by file");
    }
}

/// A file could not be read consistently this time (it changed while it was read, or reading
/// broke off); nothing of it was kept, and it is taken again.
pub struct FileRetried<'a> {
    /// File name.
    pub name: &'a str,
    /// Why.
    pub reason: &'a str,
}

impl FileRetried<'_> {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        tracing::warn!(
            file = self.name,
            reason = self.reason,
            "File not loaded this time; will retry"
        );
    }
}

/// Where a file was when moving it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmovedFile {
    /// Committed (loaded, or known from before): it stays in the input directory, and the next
    /// scan finds it in the ledger and moves it then.
    Finished,
    /// Recorded as failed by the quarantine.
    Quarantined,
    /// PostgreSQL refuses its data, and recording it as failed failed too: it is retried.
    NotQuarantined,
}

/// A file could not be moved (or recorded) after its outcome was decided.
pub struct FileNotMoved<'a> {
    /// File name.
    pub name: &'a str,
    /// Which move.
    pub which: UnmovedFile,
    /// Why.
    pub error: &'a anyhow::Error,
}

impl FileNotMoved<'_> {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        let (file, cause) = (self.name, self.error);
        match self.which {
            UnmovedFile::Finished => {
                tracing::error!(file, error.cause_chain = ?cause, "Cannot move a finished file; it will be healed on the next scan")
            }
            UnmovedFile::Quarantined => {
                tracing::error!(file, error.cause_chain = ?cause, "Cannot move a quarantined file")
            }
            UnmovedFile::NotQuarantined => {
                tracing::error!(file, error.cause_chain = ?cause, "Cannot quarantine a file PostgreSQL refuses")
            }
        }
    }
}

/// Finished ledger entries past retention were deleted, or deleting them failed.
pub struct LedgerPruned<'a> {
    /// Entries deleted, or why none could be.
    pub result: &'a anyhow::Result<u64>,
    /// The retention, days.
    pub days: u32,
}

impl LedgerPruned<'_> {
    /// Logs (nothing when there was nothing to prune).
    pub fn emit(&self, _m: &Metrics) {
        match self.result {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, days = self.days, "Pruned old ledger entries"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Cannot prune the ledger; will try again later")
            }
        }
    }
}

/// A loader loop has work but waits: this ingestor does not hold its presence lock (it is being
/// taken, or `ingestor reset` holds it, see `store::presence`).
pub struct LoadingWaitsForPresence;

impl LoadingWaitsForPresence {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        tracing::info!("Loading waits until this ingestor holds its presence lock");
    }
}
