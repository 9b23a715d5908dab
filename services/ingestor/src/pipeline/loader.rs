//! One transaction for a batch of units (files): per unit a savepoint, a claim in the ledger,
//! the rows streamed in with binary COPY, and the ledger entry finished; then one COMMIT for the
//! batch. If anything fails with the database, the whole batch rolls back and nothing of it is
//! stored. Which units there are, how one is claimed and read, is its source's (see
//! `crate::source`); the transaction, the accounting and the error budget are this module's.

use std::io;
use std::sync::Arc;

use anyhow::Context;
use event_contract::RejectReason;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::model::{FileFailure, LedgerStatus, LineCounts, Settled};
use crate::source::reader::{count_by_reason, ReadEnd, ReadMessage, ReadOptions};
use crate::source::{NotOpened, Opened, Receipt, Unit};
use crate::store::copy::{copy_rejections, insert_new, CopyNotStarted, FileDedup, KnownIds};
use crate::store::ledger::{self, Claim};
use crate::store::pool::{classify, Failure};
use crate::store::recent_ids::{CommittedIds, Mark, RecentIds};
use crate::store::{loading, Pool};

/// Chunks buffered between reader and loader: enough to overlap reading with writing, small
/// enough that memory stays at a few chunks whatever the file size.
const CHUNKS_IN_FLIGHT: usize = 2;
/// Event timestamps kept per file for the lag histogram (a sample for huge files).
const LAG_SAMPLES_PER_FILE: usize = 4_096;

/// What happened to one unit (file) in a batch; `R` is its source's receipt of what was read.
#[derive(Debug)]
pub enum FileOutcome<R> {
    /// Rows committed.
    Loaded {
        /// The accounting.
        loaded: LoadedFile,
        /// What was read: only that file may be archived (or deleted) after COMMIT.
        read: R,
    },
    /// Recorded as failed (not event CSV, or over the error budget).
    Failed {
        /// Ledger id.
        file_id: i64,
        /// Why.
        failure: FileFailure,
        /// The file that was read: only it may be moved to the failed directory.
        read: R,
    },
    /// The content was already in the ledger.
    AlreadyKnown {
        /// Ledger id.
        file_id: i64,
        /// `Loaded` or `Failed`.
        status: LedgerStatus,
        /// The file that was read: only it may be moved where the earlier outcome puts it.
        read: R,
    },
    /// Another loader or replica is loading it, or some of its events.
    Busy,
    /// It disappeared before it could be read.
    Vanished,
    /// Its name held a symbolic link or no regular file when it was opened; nothing was read.
    Refused {
        /// One of `internal_events::REFUSALS`.
        kind: &'static str,
        /// What opening it reported.
        message: String,
    },
    /// It changed or could not be read to the end; nothing of it was kept; try again later.
    Retry(String),
}

/// A committed file's accounting.
#[derive(Debug, Default)]
pub struct LoadedFile {
    /// Ledger id.
    pub file_id: i64,
    /// Line accounting.
    pub counts: LineCounts,
    /// Rejections by reason.
    pub rejected_by_reason: Vec<(RejectReason, u64)>,
    /// A sample of accepted events' timestamps (µs since the epoch).
    pub event_times: Vec<i64>,
    /// Chunks whose ids had to be looked up in the database.
    pub dedup_lookups: u64,
}

impl<R> FileOutcome<R> {
    fn lines(&self) -> u64 {
        match self {
            FileOutcome::Loaded { loaded, .. } => loaded.counts.lines,
            _ => 0,
        }
    }

    /// The outcome as the unit's source acknowledges it after COMMIT.
    pub fn settled(&self) -> Settled<'_, R> {
        match self {
            FileOutcome::Loaded { loaded, read } => Settled::Loaded {
                file_id: loaded.file_id,
                read,
            },
            FileOutcome::Failed { file_id, read, .. } => Settled::Failed {
                file_id: *file_id,
                read,
            },
            FileOutcome::AlreadyKnown {
                file_id,
                status,
                read,
            } => Settled::Known {
                file_id: *file_id,
                status: *status,
                read,
            },
            FileOutcome::Refused { kind, message } => Settled::Refused { kind, message },
            FileOutcome::Busy | FileOutcome::Vanished | FileOutcome::Retry(_) => Settled::Untouched,
        }
    }
}

impl<R> From<NotOpened> for FileOutcome<R> {
    fn from(not_opened: NotOpened) -> Self {
        match not_opened {
            NotOpened::Vanished => FileOutcome::Vanished,
            NotOpened::Refused { kind, message } => FileOutcome::Refused { kind, message },
            NotOpened::Retry(why) => FileOutcome::Retry(why),
        }
    }
}

/// Loads up to `batch_max_files` of `units` (fewer once `batch_max_rows` rows are in, or when
/// shutdown is requested) in one transaction. The ids of committed units are remembered in
/// `committed`, so that later units' duplicates of them are recognised in memory.
///
/// # Errors
/// On any database error; the transaction is then rolled back and the caller retries. An error
/// at COMMIT leaves the outcome unknown: the retry's claim consults the ledger first.
pub async fn load_batch<U: Unit>(
    settings: &Arc<Settings>,
    pool: &Pool,
    units: &[U],
    cancel: &CancellationToken,
    committed: &CommittedIds,
) -> anyhow::Result<Vec<(U, FileOutcome<Receipt<U>>)>> {
    let batch = within_byte_budget(
        &units[..units.len().min(settings.batch_max_files)],
        settings.batch_max_bytes,
    );
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    // Every file of the batch is opened and hashed before BEGIN: a file hashed inside the
    // transaction leaves it idle meanwhile, and a huge one (a sparse file of many GB reads at
    // memory speed, but still takes its time) would outlast `idle_in_transaction_timeout`, so
    // that the server ends the session and the batch fails, again and again. The files are
    // hashed side by side on blocking threads; the byte budget above bounds how long that takes.
    let identifying: Vec<JoinHandle<Result<U::Opened, NotOpened>>> =
        batch.iter().map(spawn_open).collect();
    let mut opened = Vec::with_capacity(identifying.len());
    for handle in identifying {
        opened.push(handle.await.context("identify task panicked")?);
    }
    // One unit ahead: each unit's first chunks are read while the one before it is written (the
    // first one's while the transaction begins), so that no COPY starts by waiting for its
    // reader with the session idle.
    let options = read_options(settings);
    let mut reading = opened
        .into_iter()
        .map(|opened| opened.map(|o| ReadAhead::start(o, options)));
    let mut next = reading.next();
    let mut conn = pool
        .get()
        .await
        .context("no database connection available")?;
    conn.confirm_utf8().await?;
    // In doubt until COMMIT has answered: an error or a cancellation on the way leaves the
    // session's protocol state unknown, so it is closed rather than pooled (`store::pool`).
    conn.doubt();
    let mut tx = conn
        .transaction()
        .await
        .context("cannot begin a transaction")?;
    loading::apply_settings(&tx, settings.conflict_wait).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    // The ids this transaction stored, for its later chunks and files.
    let expected = usize::try_from(settings.batch_max_rows).unwrap_or(usize::MAX);
    let mut stored = RecentIds::with_room(settings.dedup_memory_ids, expected);
    let mut rows = 0;
    for unit in batch {
        let Some(current) = std::mem::replace(&mut next, reading.next()) else {
            break;
        };
        let outcome = match current {
            Err(not_opened) => FileOutcome::from(not_opened),
            Ok(file) => {
                let mut known = KnownIds {
                    transaction: &mut stored,
                    committed,
                };
                load_file(&mut tx, settings, unit.name(), file, &mut known).await?
            }
        };
        rows += outcome.lines();
        outcomes.push((unit.clone(), outcome));
        if rows >= settings.batch_max_rows || cancel.is_cancelled() {
            break;
        }
    }
    tx.commit()
        .await
        .context("COMMIT failed; its outcome is unknown until the ledger is read again")?;
    conn.settle();
    committed.remember(stored.iter());
    Ok(outcomes)
}

/// The first of `units` whose sizes (as listed) add up to at most `budget` bytes, and always
/// the first (none if there are none): a file bigger than the budget is loaded in a batch of
/// its own, and one that no longer fits waits for the next batch.
pub fn within_byte_budget<U: Unit>(units: &[U], budget: u64) -> &[U] {
    &units[..units_within_bytes(units.iter().map(Unit::size), budget)]
}

/// How many of the units of `sizes` [`within_byte_budget`] keeps.
pub fn units_within_bytes(sizes: impl ExactSizeIterator<Item = u64>, budget: u64) -> usize {
    let units = sizes.len();
    let mut bytes = 0u64;
    let fitting = sizes
        .take_while(|size| {
            bytes = bytes.saturating_add(*size);
            bytes <= budget
        })
        .count();
    fitting.max(1).min(units)
}

/// Opens (pins and identifies) a unit on a blocking thread. What it returns is the only thing
/// the unit is read through: the rows come from the bytes that were hashed and claimed.
fn spawn_open<U: Unit>(unit: &U) -> JoinHandle<Result<U::Opened, NotOpened>> {
    let unit = unit.clone();
    tokio::task::spawn_blocking(move || unit.open())
}

/// Loads one unit (`name`, for the log) inside the batch's transaction, under a savepoint of
/// its own so that a unit that must not be kept can be undone without losing the rest of the
/// batch.
#[tracing::instrument(name = "load_file", skip_all, fields(file = %name))]
async fn load_file<O: Opened>(
    tx: &mut Transaction<'_>,
    settings: &Arc<Settings>,
    name: &str,
    reading: ReadAhead<O>,
    known: &mut KnownIds<'_>,
) -> anyhow::Result<FileOutcome<O::Receipt>> {
    let opened = reading.opened.clone();
    // Whatever undoes this file undoes its ids in the transaction's memory too.
    let before = known.transaction.mark();
    let identity = opened.identity();
    let read = opened.receipt();
    let mut sp = tx
        .savepoint("file")
        .await
        .context("cannot create a savepoint")?;
    let file_id = match opened.claim(&sp, &settings.instance_id).await? {
        Claim::Busy => {
            undo(sp, known.transaction, before).await?;
            return Ok(FileOutcome::Busy);
        }
        Claim::Known { file_id, status } => {
            sp.commit().await.context("cannot release the savepoint")?;
            return Ok(FileOutcome::AlreadyKnown {
                file_id,
                status,
                read,
            });
        }
        Claim::Claimed { file_id } => file_id,
    };
    let (end, loaded) = match stream_file(&mut sp, settings, reading.rows, file_id, known).await {
        Ok(streamed) => streamed,
        Err(e) if classify(&e) == Failure::Conflict && !CopyNotStarted::caused(&e) => {
            // Some of its events are being inserted by another in-flight transaction: undo
            // this file and take it again once that one has committed (it will then count
            // those events as duplicates), instead of waiting with the whole batch. A COPY that
            // timed out before it started (a table lock) is not this: its session is out of
            // step and must not run another statement (see `CopyNotStarted`).
            undo(sp, known.transaction, before).await?;
            return Ok(FileOutcome::Busy);
        }
        Err(e) => return Err(e),
    };
    let failure = match end {
        ReadEnd::Done(reread) if reread != identity => {
            undo(sp, known.transaction, before).await?;
            return Ok(FileOutcome::Retry(
                "content changed while it was read".into(),
            ));
        }
        ReadEnd::Interrupted(e) => {
            undo(sp, known.transaction, before).await?;
            return Ok(FileOutcome::Retry(format!("reading broke off: {e}")));
        }
        ReadEnd::Unreadable(failure) => Some(failure),
        ReadEnd::Done(_) => over_budget(settings, &loaded.counts),
    };
    match failure {
        None => {
            ledger::finish_loaded(&sp, file_id, &loaded.counts).await?;
            sp.commit().await.context("cannot release the savepoint")?;
            Ok(FileOutcome::Loaded { loaded, read })
        }
        Some(failure) => {
            undo(sp, known.transaction, before).await?;
            let file_id = opened
                .record_failed(tx, &settings.instance_id, &failure)
                .await?;
            Ok(FileOutcome::Failed {
                file_id,
                failure,
                read,
            })
        }
    }
}

/// A unit whose rows a blocking thread reads into a bounded channel, from before its turn in
/// the batch. Dropping it (the unit is not loaded after all, or the batch ends) stops the reader
/// at its next chunk.
struct ReadAhead<O> {
    opened: Arc<O>,
    rows: mpsc::Receiver<ReadMessage>,
}

impl<O: Opened> ReadAhead<O> {
    fn start(opened: O, options: ReadOptions) -> Self {
        let opened = Arc::new(opened);
        let (sender, rows) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let reader = opened.clone();
        tokio::task::spawn_blocking(move || reader.read_rows(options, &sender));
        ReadAhead { opened, rows }
    }
}

fn read_options(settings: &Settings) -> ReadOptions {
    ReadOptions {
        max_line_bytes: settings.max_line_bytes,
        extra_columns: settings.extra_columns,
        max_future_skew: settings.max_future_skew,
        chunk_rows: settings.chunk_rows,
    }
}

/// Undoes everything one file did in the batch's transaction (back to the file's savepoint),
/// keeping what the batch's other files did; the ids it stored are forgotten (`before` is where
/// the transaction's memory stood when the file began).
async fn undo(
    file_savepoint: Transaction<'_>,
    stored: &mut RecentIds,
    before: Mark,
) -> anyhow::Result<()> {
    stored.forget_since(before);
    file_savepoint
        .rollback()
        .await
        .context("cannot roll back to the savepoint")
}

/// Streams the unit's chunks into the database; returns how reading ended and the accounting.
async fn stream_file(
    tx: &mut Transaction<'_>,
    settings: &Arc<Settings>,
    mut receiver: mpsc::Receiver<ReadMessage>,
    file_id: i64,
    known: &mut KnownIds<'_>,
) -> anyhow::Result<(ReadEnd, LoadedFile)> {
    let mut loaded = LoadedFile {
        file_id,
        ..LoadedFile::default()
    };
    let mut dedup = FileDedup::default();
    let keepalive = keepalive_interval(settings);
    let end = loop {
        let chunk = match next_message(tx, &mut receiver, keepalive).await? {
            Some(ReadMessage::Chunk(chunk)) => chunk,
            Some(ReadMessage::End(end)) => break end,
            None => {
                break ReadEnd::Interrupted(io::Error::other("reader stopped without finishing"))
            }
        };
        let counts = &mut loaded.counts;
        counts.lines += (chunk.events.len() + chunk.rejections.len()) as u64;
        counts.rejected += chunk.rejections.len() as u64;
        // Sampled before the insert consumes the chunk: duplicates (a few percent at most) are
        // in the lag sample too, which does not move its percentiles.
        let room = LAG_SAMPLES_PER_FILE.saturating_sub(loaded.event_times.len());
        loaded.event_times.extend(
            chunk
                .events
                .iter()
                .take(room)
                .map(|e| e.event.event_timestamp.as_utc().timestamp_micros()),
        );
        let inserted = insert_new(tx, file_id, chunk.events, &mut dedup, known).await?;
        counts.accepted += inserted.accepted;
        counts.duplicates += inserted.duplicates;
        loaded.dedup_lookups += u64::from(inserted.looked_up);
        copy_rejections(tx, file_id, &chunk.rejections).await?;
        count_by_reason(&chunk.rejections, &mut loaded.rejected_by_reason);
    };
    Ok((end, loaded))
}

/// How long the loader waits for the reader before it shows the server the session is alive:
/// a third of `idle_in_transaction_timeout`, so two keepalives can be late before it fires;
/// `None` when that timeout is off.
fn keepalive_interval(settings: &Settings) -> Option<std::time::Duration> {
    let timeout = settings.idle_in_transaction_timeout;
    (!timeout.is_zero()).then(|| (timeout / 3).max(std::time::Duration::from_millis(1)))
}

/// The reader's next message. While it reads a long stretch without a row to send (a huge
/// record it skips, such as the hole of a sparse file), the transaction runs no statement, and
/// the server would end it as idle: a `SELECT 1` between chunks (never during a COPY) keeps it
/// alive. A frozen or dead process sends none, so the timeout still frees what it holds.
async fn next_message(
    tx: &Transaction<'_>,
    receiver: &mut mpsc::Receiver<ReadMessage>,
    keepalive: Option<std::time::Duration>,
) -> anyhow::Result<Option<ReadMessage>> {
    let Some(every) = keepalive else {
        return Ok(receiver.recv().await);
    };
    loop {
        match tokio::time::timeout(every, receiver.recv()).await {
            Ok(message) => return Ok(message),
            Err(_) => {
                loading::keep_alive(tx).await?;
            }
        }
    }
}

/// The error budget: a file whose rejected share exceeds the configured ratio fails as a whole.
fn over_budget(settings: &Settings, counts: &LineCounts) -> Option<FileFailure> {
    let ratio = settings.max_reject_ratio?;
    let share = counts.rejected as f64 / counts.lines.max(1) as f64;
    (counts.lines > 0 && share > ratio).then_some(FileFailure::ErrorBudgetExceeded {
        rejected: counts.rejected,
        lines: counts.lines,
        budget: ratio,
    })
}
