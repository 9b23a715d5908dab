//! Where the rows go. The write loop (`startup`) draws rows, paces them and counts them; a
//! [`Sink`] only writes them and makes each batch visible downstream. The seam is one trait
//! with two implementations, chosen once by the `sink` setting:
//!
//! - [`directory`]: a batch is a CSV file, published atomically when complete, discarded when
//!   the run stops in the middle of it.
//! - [`kafka`]: a batch is a run of messages (one per row, keyed by user id) from an idempotent
//!   producer, complete when every message of it is acknowledged; at shutdown the messages
//!   already handed to the producer are flushed, since a message cannot be taken back.
//!
//! [`message`] encodes a row as a Kafka message payload (CSV line or JSON object).

pub mod directory;
pub mod kafka;
pub mod message;

use tokio_util::sync::CancellationToken;

use crate::rows::Row;
use crate::summary::RowCounts;

pub use directory::{is_temp_file, DirectorySink, FileSink, PendingFile};
pub use kafka::KafkaSink;

/// A destination for rows, one batch at a time (a file, or a run of messages of `rows` rows).
/// Each sink emits its own internal event for a finished batch, from the counts the loop hands
/// over, so the loop stays the same for both.
pub trait Sink {
    /// Starts a batch.
    ///
    /// # Errors
    /// When the batch cannot be started (e.g. the temp file cannot be created).
    fn begin(&mut self) -> anyhow::Result<()>;

    /// Writes one row into the current batch.
    ///
    /// # Errors
    /// When the row cannot be written or handed to the producer.
    fn write(&mut self, row: &Row) -> anyhow::Result<()>;

    /// Completes the batch, whose rows were counted into `counts`: publishes the file, or waits
    /// until every message is acknowledged. `cancel` firing shortens a wait that could be long.
    ///
    /// # Errors
    /// When the batch could not be made visible in full (a rename failed, a message was not
    /// delivered).
    fn publish(&mut self, counts: &RowCounts, cancel: &CancellationToken) -> anyhow::Result<()>;

    /// The run stopped in the middle of a batch whose written rows are `counts`.
    ///
    /// # Errors
    /// When rows the sink could not take back were not delivered.
    fn stop(&mut self, counts: &RowCounts) -> anyhow::Result<Stopped>;
}

/// What became of a batch the run stopped in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its rows were thrown away before anyone could see them (a file in progress).
    Discarded,
    /// Its rows were delivered anyway (messages already handed to the producer).
    Delivered,
}
