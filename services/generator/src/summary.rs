//! What a run produced, counted per published file and reported in one line at exit.

use std::collections::BTreeMap;

use event_contract::RejectReason;

use crate::rows::Row;

/// Counts of rows by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RowCounts {
    /// All rows, header excluded.
    pub rows: u64,
    /// New valid events (late ones included).
    pub valid: u64,
    /// Valid events stamped late on purpose.
    pub late: u64,
    /// Exact repeats of earlier events.
    pub duplicates: u64,
    /// Rows that break the contract.
    pub invalid: u64,
    /// Invalid rows by reason code.
    pub invalid_by_reason: BTreeMap<&'static str, u64>,
}

impl RowCounts {
    /// Counts one row.
    pub fn count(&mut self, row: &Row) {
        self.rows += 1;
        match row {
            Row::Valid { late, .. } => {
                self.valid += 1;
                self.late += u64::from(*late);
            }
            Row::Duplicate(_) => self.duplicates += 1,
            Row::Invalid { reason, .. } => {
                self.invalid += 1;
                *self
                    .invalid_by_reason
                    .entry(RejectReason::code(*reason))
                    .or_default() += 1;
            }
        }
    }

    /// Adds another tally (a published file's) to this one.
    pub fn add(&mut self, other: &RowCounts) {
        self.rows += other.rows;
        self.valid += other.valid;
        self.late += other.late;
        self.duplicates += other.duplicates;
        self.invalid += other.invalid;
        for (reason, n) in &other.invalid_by_reason {
            *self.invalid_by_reason.entry(reason).or_default() += n;
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RunSummary {
    /// The seed used (given or drawn), to reproduce the run.
    pub seed: u64,
    /// Batches published: files (sink `directory`), or runs of `rows` messages all acknowledged
    /// (sink `kafka`).
    pub files: u64,
    /// Rows in published batches (with sink `kafka`, also the messages of an unfinished batch
    /// flushed at shutdown).
    pub published: RowCounts,
    /// Rows of an unfinished file discarded at shutdown (never visible to readers; always 0 with
    /// sink `kafka`).
    pub discarded_rows: u64,
    /// Wall-clock seconds the run took.
    pub elapsed_seconds: f64,
}

impl RunSummary {
    /// Published rows per second over the run.
    pub fn rows_per_second(&self) -> f64 {
        if self.elapsed_seconds > 0.0 {
            self.published.rows as f64 / self.elapsed_seconds
        } else {
            0.0
        }
    }
}
