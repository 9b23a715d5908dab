//! Why a record was rejected: a stable code for machines and a message for people.
//!
//! The codes are part of the product's interface: they are stored in the rejected-rows table,
//! used as metric label values and matched on by operators' queries. Never rename one; add new
//! ones at the end of [`RejectReason::ALL`].

use std::fmt;

use crate::column::Column;

/// The machine-readable reason a record breaks the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The record has more or fewer fields than the header.
    WrongFieldCount,
    /// A required field is empty (including `price` for any type but `view`).
    MissingField,
    /// `event_id` is not a UUID.
    BadUuid,
    /// `user_id` or `product_id` is not a positive 64-bit integer.
    BadInteger,
    /// `event_type` is not one of the four known types.
    UnknownEventType,
    /// `price` is not a decimal with at most 2 fraction digits in `0 <= price < 1,000,000`.
    BadPrice,
    /// `event_timestamp` is not RFC 3339 with an offset.
    BadTimestamp,
    /// `event_timestamp` lies further in the future than the allowed clock skew.
    FutureTimestamp,
    /// A field is not valid UTF-8.
    NotUtf8,
    /// The record is longer than the reader's byte cap; its content was skipped.
    LineTooLong,
    /// A quoted field is still open at the end of its line: a stray `"`. The record ends at the
    /// line break (no contract field may contain one) and reading resumes on the next line.
    UnterminatedQuote,
}

impl RejectReason {
    /// Every reason, in a fixed order: the complete label set for metrics.
    pub const ALL: [RejectReason; 11] = [
        RejectReason::WrongFieldCount,
        RejectReason::MissingField,
        RejectReason::BadUuid,
        RejectReason::BadInteger,
        RejectReason::UnknownEventType,
        RejectReason::BadPrice,
        RejectReason::BadTimestamp,
        RejectReason::FutureTimestamp,
        RejectReason::NotUtf8,
        RejectReason::LineTooLong,
        RejectReason::UnterminatedQuote,
    ];

    /// The stable snake_case code stored in the database and used as a metric label.
    pub const fn code(self) -> &'static str {
        match self {
            RejectReason::WrongFieldCount => "wrong_field_count",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadUuid => "bad_uuid",
            RejectReason::BadInteger => "bad_integer",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::BadPrice => "bad_price",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::LineTooLong => "line_too_long",
            RejectReason::UnterminatedQuote => "unterminated_quote",
        }
    }

    /// The reason with the given code, if there is one.
    pub fn from_code(code: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A record that breaks the contract: why, in which field, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    /// The machine-readable reason.
    pub reason: RejectReason,
    /// The offending column, when one field is to blame.
    pub column: Option<Column>,
    /// A human-readable explanation that names the field and quotes the offending value.
    pub message: String,
}

/// Longest prefix of an offending value quoted in a message: a 1 MiB garbage field must not turn
/// into a 1 MiB log line or database row.
const MAX_QUOTED_CHARS: usize = 64;

impl Rejection {
    /// A rejection of one field's value, quoting it (shortened if long) in the message.
    pub fn field(reason: RejectReason, column: Column, value: &str, why: &str) -> Self {
        Rejection {
            reason,
            column: Some(column),
            message: format!("field `{}` = {}: {why}", column.name(), quote(value)),
        }
    }

    /// A rejection of the record as a whole.
    pub fn record(reason: RejectReason, message: String) -> Self {
        Rejection {
            reason,
            column: None,
            message,
        }
    }
}

/// Quotes `value` for a message, cutting it at [`MAX_QUOTED_CHARS`] characters.
fn quote(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}... ({} bytes)", value.len())
    } else {
        format!("{head:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_is_unique() {
        let mut codes: Vec<&str> = RejectReason::ALL.iter().map(|r| r.code()).collect();
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::from_code(reason.code()), Some(reason));
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), RejectReason::ALL.len());
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let value = "x".repeat(10_000);
        let rejection = Rejection::field(RejectReason::BadUuid, Column::EventId, &value, "no");
        assert!(rejection.message.len() < 200, "{}", rejection.message);
        assert!(rejection.message.contains("10000 bytes"));
    }
}
