//! One directory, one database: the identity of the database an input directory is loaded
//! into, and what claiming the directory found. The marker file itself is `crate::claim`'s.

use std::fmt;

/// The database a directory's files are loaded into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseIdentity {
    /// The server's `pg_control_system().system_identifier`.
    pub system_identifier: i64,
    /// The database's name on that server.
    pub database: String,
}

impl fmt::Display for DatabaseIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "database `{}` on the server with system identifier {}",
            self.database, self.system_identifier
        )
    }
}

/// What claiming the input directory found (see `crate::claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryClaim {
    /// There was no marker; this ingestor wrote one.
    Written,
    /// The marker names this ingestor's database.
    Confirmed,
}

impl DirectoryClaim {
    /// `written` or `confirmed`, for the log.
    pub fn code(self) -> &'static str {
        match self {
            DirectoryClaim::Written => "written",
            DirectoryClaim::Confirmed => "confirmed",
        }
    }
}
