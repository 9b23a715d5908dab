//! A ledger entry's state, as the `ingest_files.status` column stores it.

use std::error::Error;
use std::fmt;

use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

/// The state of one file content in the ledger. The values are those of the
/// `ingest_files_status_known` CHECK constraint in `sql/020_ledger.sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LedgerStatus {
    /// Claimed by a transaction that has not committed: never visible to another session.
    Loading,
    /// Rows committed together with this entry.
    Loaded,
    /// Recorded as failed as a whole; the file is in the failed directory.
    Failed,
}

impl LedgerStatus {
    /// Every state, in the order a file goes through them.
    pub const ALL: [LedgerStatus; 3] = [
        LedgerStatus::Loading,
        LedgerStatus::Loaded,
        LedgerStatus::Failed,
    ];

    /// The stored value.
    pub const fn as_str(self) -> &'static str {
        match self {
            LedgerStatus::Loading => "loading",
            LedgerStatus::Loaded => "loaded",
            LedgerStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for LedgerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored status this build does not know: the database was changed by something else.
#[derive(Debug)]
struct UnknownStatus(String);

impl fmt::Display for UnknownStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown ledger status {:?}", self.0)
    }
}

impl Error for UnknownStatus {}

impl ToSql for LedgerStatus {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        self.as_str().to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for LedgerStatus {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        LedgerStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_owned()).into())
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_one_the_ledger_check_constraint_allows() {
        let sql = include_str!("../../../../sql/020_ledger.sql");
        let allowed = LedgerStatus::ALL
            .map(|s| format!("'{}'", s.as_str()))
            .join(", ");
        assert!(
            sql.contains(&format!("CHECK (status IN ({allowed}))")),
            "sql/020_ledger.sql's status CHECK differs from LedgerStatus::ALL ({allowed})"
        );
    }
}
