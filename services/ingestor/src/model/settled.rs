//! What a committed transaction decided for one unit of work, as the unit's source needs it to
//! acknowledge the unit: a directory moves the file that was read, a log would do nothing.

use super::LedgerStatus;

/// One unit's outcome once its batch has committed. `R` is the source's receipt of what was
/// read (a file's stamp: only that file may be moved).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settled<'a, R> {
    /// Its rows and its ledger entry committed.
    Loaded {
        /// Ledger id.
        file_id: i64,
        /// What was read.
        read: &'a R,
    },
    /// Recorded as failed as a whole; the record committed.
    Failed {
        /// Ledger id.
        file_id: i64,
        /// What was read.
        read: &'a R,
    },
    /// Its content was already in the ledger: the earlier outcome stands.
    Known {
        /// The existing ledger id.
        file_id: i64,
        /// `Loaded` or `Failed`.
        status: LedgerStatus,
        /// What was read.
        read: &'a R,
    },
    /// Opening refused it (a name holding a symbolic link or no regular file); nothing read.
    Refused {
        /// One of `internal_events::REFUSALS`.
        kind: &'static str,
        /// What opening reported.
        message: &'a str,
    },
    /// Nothing of it committed (busy, vanished, to be retried): it stays where it is and is
    /// offered again.
    Untouched,
}
