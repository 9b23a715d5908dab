//! The types that cross layers: what the source finds, the reader produces, the store writes and
//! `internal_events` counts. They live below `pipeline/`, `store/` and `internal_events`, so each
//! of those imports them from here and none imports another to get them.

mod directory_claim;
mod file;
mod file_failure;
mod ledger_status;
mod log_partition;
mod rows;
mod settled;

pub use directory_claim::{DatabaseIdentity, DirectoryClaim};
pub use file::{FileChange, FileIdentity, FileStamp};
pub use file_failure::FileFailure;
pub use ledger_status::LedgerStatus;
pub use log_partition::{PartitionKey, PartitionView};
pub use rows::{LineCounts, LineEvent, RejectedRow};
pub use settled::Settled;
