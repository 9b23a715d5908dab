//! What reading a file yields and how its lines are accounted for: valid events with their
//! line, rejected rows with their reason, and the per-file line counts.

use event_contract::{Event, RejectReason};

/// A row that broke the contract, ready for `rejected_rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    /// 1-based line where the record starts.
    pub line: u64,
    /// The raw text, valid UTF-8 without NUL bytes (what a `text` column can hold).
    pub raw: String,
    /// Why.
    pub reason: RejectReason,
    /// Explanation.
    pub message: String,
}

/// A valid event and the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineEvent {
    /// The event.
    pub event: Event,
    /// 1-based line where the record starts.
    pub line: u64,
}

/// A file's line accounting: every data line lands in exactly one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LineCounts {
    /// Data lines (records) read, header excluded.
    pub lines: u64,
    /// Inserted into `events`.
    pub accepted: u64,
    /// Valid, but the event_id was already stored (or repeated in the file).
    pub duplicates: u64,
    /// Broke the contract; stored in `rejected_rows`.
    pub rejected: u64,
}
