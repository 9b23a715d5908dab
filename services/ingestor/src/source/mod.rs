//! Where work comes from: the seam between a source of events and the loader's transaction.
//!
//! A [`Source`] offers [`Unit`]s of work (a ready file; a partition's next messages), each
//! [opened](Unit::open) before the transaction begins so that its identity is known and its
//! bytes are pinned. Inside the transaction the loader (`pipeline::loader`) asks the
//! opened unit to [claim](Opened::claim) its ledger entry, streams its
//! [rows](Opened::read_rows) through COPY and finishes the entry; after COMMIT the source
//! [acknowledges](Source::acknowledge) the unit (a directory moves the file; a log has nothing
//! to do). The loader owns the transaction and the accounting; a source owns discovery, its
//! ledger key and what happens after COMMIT. docs/architecture.md ("The source interface")
//! says what each side guarantees.
//!
//! Two sources implement it. The Kafka source is [`kafka`] (topics' partitions, offsets stored
//! in PostgreSQL). The directory: [`DirectorySource`] over [`Discovery`] (inotify and
//! rescans), [`reader`] (a file's bytes to rows, through the contract) and [`lifecycle`]
//! (archiving, deleting or failing files after COMMIT).

mod directory;
mod discovery;
pub mod kafka;
pub mod lifecycle;
mod open;
pub mod reader;

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tokio_postgres::Transaction;

use crate::internal_events::Metrics;
use crate::model::{FileFailure, FileIdentity, Settled};
use crate::store::ledger::Claim;

pub use directory::{DirectorySource, OpenedCandidate};
pub use discovery::{Candidate, Discovery, FutureModified, NotRegular, Scan};
pub use open::{open_regular, refusal};
pub use reader::{ReadMessage, ReadOptions};

/// A source of work, shared by the loader loops of one process.
pub trait Source: Send + Sync + 'static {
    /// What the loops take, batch and hand to the loader.
    type Unit: Unit;

    /// A receiver notified whenever new work may be ready; each loop holds its own.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// The units ready now, oldest first. What the look found that is not work (a name refused,
    /// a listing error) the source reports itself.
    fn ready(&self, metrics: &Metrics) -> Vec<Self::Unit>;

    /// Reports how much work waits (backlog gauges), on the housekeeping task's clock.
    fn report_backlog(&self, metrics: &Metrics);

    /// After COMMIT (or when nothing of the unit committed): whatever the source does with a
    /// unit once its outcome is durable. Runs at least once per committed outcome, and again
    /// if the process dies before it finished (the ledger then answers `Known`), so it must be
    /// repeatable.
    ///
    /// # Errors
    /// When the acknowledgement could not be done; the unit's outcome stays committed, and the
    /// caller reports the error.
    fn acknowledge(
        &self,
        unit: &Self::Unit,
        settled: Settled<'_, Receipt<Self::Unit>>,
        metrics: &Metrics,
    ) -> anyhow::Result<()>;
}

/// What a unit's source keeps of what was read, to acknowledge the right thing after COMMIT.
pub type Receipt<U> = <<U as Unit>::Opened as Opened>::Receipt;

/// One unit of work as discovered: cheap to hold, to batch and to offer again.
pub trait Unit: Clone + Send + Sync + 'static {
    /// What tells two units apart while one is in flight (a path; a topic and partition): a
    /// loop takes a unit only if no other loop holds its key.
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;
    /// The unit opened for loading.
    type Opened: Opened;

    /// Its key.
    fn key(&self) -> Self::Key;
    /// Its name, for logs and the ledger.
    fn name(&self) -> &str;
    /// Its size in bytes as discovered, for the batch's byte budget.
    fn size(&self) -> u64;
    /// When it landed, for the ledger's `landed_at` and the latency metrics.
    fn landed(&self) -> SystemTime;
    /// Pins its bytes and learns its identity; blocking (the loader calls it on a blocking
    /// thread, before BEGIN, so that no transaction idles while it runs).
    ///
    /// # Errors
    /// [`NotOpened`] when there is nothing to load now.
    fn open(&self) -> Result<Self::Opened, NotOpened>;
}

/// Why a unit could not be opened; nothing of it was read, and the loader goes on with the
/// batch's other units.
#[derive(Debug, thiserror::Error)]
pub enum NotOpened {
    /// It disappeared before it could be read.
    #[error("it disappeared before it could be read")]
    Vanished,
    /// Its name held a symbolic link or no regular file.
    #[error("{message}")]
    Refused {
        /// One of `internal_events::REFUSALS`.
        kind: &'static str,
        /// What opening reported.
        message: String,
    },
    /// It cannot be read now; it is offered again later.
    #[error("{0}")]
    Retry(String),
}

/// A unit opened for loading: its identity known, its bytes pinned. The loader holds it for
/// the unit's part of the transaction, and shares it with the thread reading its rows.
pub trait Opened: Send + Sync + 'static {
    /// What acknowledging needs to know of what was read (see [`Source::acknowledge`]).
    type Receipt: Debug + Send + Sync + 'static;

    /// The content identity of the bytes pinned at the open.
    fn identity(&self) -> FileIdentity;

    /// What was read, for the acknowledgement after COMMIT.
    fn receipt(&self) -> Self::Receipt;

    /// Claims the unit's ledger entry in `tx` (and, for a log, advances its stored offsets in
    /// the same transaction): [`Claim::Claimed`] with a fresh `loading` entry, [`Claim::Busy`]
    /// when another transaction holds the unit, [`Claim::Known`] when it is already finished.
    ///
    /// # Errors
    /// On a database error; the loader then rolls the whole batch back.
    fn claim(
        &self,
        tx: &Transaction<'_>,
        instance: &str,
    ) -> impl Future<Output = anyhow::Result<Claim>> + Send;

    /// Records the unit as failed as a whole in `tx` (its claim was rolled back); returns the
    /// ledger id.
    ///
    /// # Errors
    /// On a database error.
    fn record_failed(
        &self,
        tx: &Transaction<'_>,
        instance: &str,
        failure: &FileFailure,
    ) -> impl Future<Output = anyhow::Result<i64>> + Send;

    /// Reads the unit's rows into chunks and sends them, then how reading ended; blocking (runs
    /// on a blocking thread); stops early when the receiver is dropped. Every row goes through
    /// the event contract's validation.
    fn read_rows(&self, options: ReadOptions, sender: &mpsc::Sender<ReadMessage>);
}
