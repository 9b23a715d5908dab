//! Why a whole file is recorded as failed: the ledger's `failure_reason` is its stable
//! [`FileFailure::code`], `failure_message` its text.

use std::fmt;

use event_contract::{HeaderError, ReadError};

/// Why a file was failed as a whole instead of loaded (a bad row never fails its file; these
/// do).
#[derive(Debug, Clone, PartialEq)]
pub enum FileFailure {
    /// No header line.
    Empty,
    /// A header the contract cannot read (missing or repeated column, not UTF-8, ...).
    BadHeader(HeaderError),
    /// More rows rejected than `max_reject_ratio` allows.
    ErrorBudgetExceeded {
        /// Rejected rows.
        rejected: u64,
        /// Data lines.
        lines: u64,
        /// The configured ratio.
        budget: f64,
    },
    /// PostgreSQL refused the file's rows (a genuine row-data SQLSTATE): quarantined so that
    /// one such file cannot stop the service. Holds the server's message with its SQLSTATE.
    DatabaseRejected(String),
}

impl FileFailure {
    /// Every code there is: the contract's codes of a file that is not event CSV, then ours (the
    /// label values of `ingestor_files_failed_total`, pre-created).
    pub fn codes() -> impl Iterator<Item = &'static str> {
        ReadError::UNREADABLE_CODES
            .into_iter()
            .chain(["error_budget_exceeded", "database_rejected"])
    }

    /// The stable code: the ledger's `failure_reason`, a log field.
    pub fn code(&self) -> &'static str {
        match self {
            FileFailure::Empty => "empty_file",
            FileFailure::BadHeader(e) => e.code(),
            FileFailure::ErrorBudgetExceeded { .. } => "error_budget_exceeded",
            FileFailure::DatabaseRejected(_) => "database_rejected",
        }
    }
}

impl fmt::Display for FileFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileFailure::Empty => f.write_str("file is empty (no header line)"),
            // A header error quotes the offending column name, which may hold NUL bytes, which
            // PostgreSQL's text cannot store.
            FileFailure::BadHeader(e) => f.write_str(&e.to_string().replace('\0', "")),
            FileFailure::ErrorBudgetExceeded {
                rejected,
                lines,
                budget,
            } => write!(
                f,
                "{rejected} of {lines} rows rejected ({:.2}%), over the {:.2}% budget",
                *rejected as f64 / (*lines).max(1) as f64 * 100.0,
                budget * 100.0
            ),
            FileFailure::DatabaseRejected(message) => f.write_str(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_ledger_reasons_operators_already_know() {
        let budget = FileFailure::ErrorBudgetExceeded {
            rejected: 3,
            lines: 4,
            budget: 0.5,
        };
        assert_eq!(budget.code(), "error_budget_exceeded");
        assert_eq!(
            budget.to_string(),
            "3 of 4 rows rejected (75.00%), over the 50.00% budget"
        );
        assert_eq!(FileFailure::Empty.code(), "empty_file");
        let header = FileFailure::BadHeader(HeaderError::DuplicateColumn("a\0b".into()));
        assert_eq!(header.code(), "header_duplicate_column");
        assert_eq!(header.to_string(), "header names column `ab` twice");
        assert_eq!(
            FileFailure::DatabaseRejected("x".into()).code(),
            "database_rejected"
        );
        for failure in [budget, FileFailure::Empty, header] {
            assert!(
                FileFailure::codes().any(|c| c == failure.code()),
                "{failure:?}"
            );
        }
        assert!(FileFailure::codes().any(|c| c == "database_rejected"));
    }
}
