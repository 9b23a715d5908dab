//! Identifier newtypes: the event's UUID and the positive 64-bit user and product ids.

use std::fmt;

use uuid::Uuid;

use crate::column::Column;
use crate::reject::{RejectReason, Rejection};

/// The event's globally unique id (a UUID of any version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    /// Parses any UUID form the `uuid` crate accepts (hyphenated, simple, braced, urn).
    ///
    /// # Errors
    /// [`RejectReason::MissingField`] when empty, [`RejectReason::BadUuid`] otherwise.
    pub fn parse(raw: &str) -> Result<Self, Rejection> {
        require(raw, Column::EventId)?;
        Uuid::parse_str(raw).map(EventId).map_err(|e| {
            Rejection::field(RejectReason::BadUuid, Column::EventId, raw, &e.to_string())
        })
    }

    /// The UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl From<Uuid> for EventId {
    fn from(uuid: Uuid) -> Self {
        EventId(uuid)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Defines a positive 64-bit id newtype: `1 ..= i64::MAX`, the range of a PostgreSQL `bigint`
/// that is greater than zero.
macro_rules! positive_id {
    ($(#[$doc:meta])* $name:ident, $column:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(i64);

        impl $name {
            /// Parses plain ASCII digits (no sign, no spaces) into a value in `1 ..= i64::MAX`.
            ///
            /// # Errors
            /// [`RejectReason::MissingField`] when empty, [`RejectReason::BadInteger`] otherwise.
            pub fn parse(raw: &str) -> Result<Self, Rejection> {
                parse_positive(raw, $column).map($name)
            }

            /// Builds the id from a value, if it is positive.
            pub fn new(value: i64) -> Option<Self> {
                (value > 0).then_some($name(value))
            }

            /// The id as PostgreSQL's `bigint` holds it.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

positive_id!(
    /// The id of the user who acted.
    UserId,
    Column::UserId
);
positive_id!(
    /// The id of the product acted on.
    ProductId,
    Column::ProductId
);

/// The most decimal digits that always fit an `i64` (`i64::MAX` has 19).
const MAX_DIGITS_WITHOUT_OVERFLOW: usize = 18;

fn parse_positive(raw: &str, column: Column) -> Result<i64, Rejection> {
    require(raw, column)?;
    let bad = |why: &str| Rejection::field(RejectReason::BadInteger, column, raw, why);
    let not_digits = || bad("not a positive integer (digits only)");
    // `i64::from_str` accepts a leading `+`; the contract wants digits only.
    // One pass over the digits (this runs twice per row); a non-digit anywhere is reported
    // before an overflow, as when the digits were checked first and then parsed.
    let value = if raw.len() <= MAX_DIGITS_WITHOUT_OVERFLOW {
        // Too few digits to overflow: no check per digit (nearly every id).
        raw.bytes().try_fold(0i64, |value, byte| {
            let digit = byte.wrapping_sub(b'0');
            (digit < 10).then(|| value * 10 + i64::from(digit))
        })
    } else {
        let mut value = Some(0i64);
        for byte in raw.bytes() {
            if !byte.is_ascii_digit() {
                return Err(not_digits());
            }
            value = value
                .and_then(|v| v.checked_mul(10))
                .and_then(|v| v.checked_add(i64::from(byte - b'0')));
        }
        Some(value.ok_or_else(|| bad("out of range for a 64-bit integer"))?)
    };
    let value = value.ok_or_else(not_digits)?;
    if value == 0 {
        return Err(bad("must be greater than zero"));
    }
    Ok(value)
}

/// Rejects an empty required field.
pub(crate) fn require(raw: &str, column: Column) -> Result<(), Rejection> {
    if raw.is_empty() {
        Err(Rejection::field(
            RejectReason::MissingField,
            column,
            raw,
            "required field is empty",
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_full_positive_range() {
        assert_eq!(UserId::parse("1").map(UserId::get), Ok(1));
        assert_eq!(
            ProductId::parse("9223372036854775807").map(ProductId::get),
            Ok(i64::MAX)
        );
    }

    #[test]
    fn ids_reject_zero_signs_spaces_and_overflow() {
        for raw in [
            "0",
            "+5",
            "-5",
            " 5",
            "5 ",
            "1.0",
            "9223372036854775808",
            "x",
        ] {
            let err = UserId::parse(raw).unwrap_err();
            assert_eq!(err.reason, RejectReason::BadInteger, "{raw}");
            assert_eq!(err.column, Some(Column::UserId));
        }
    }

    #[test]
    fn ids_parse_as_the_standard_parser_does() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(5000), |(raw in "[0-9]{1,21}|[0-9+ -]{1,4}|[0-9]{0,3}x?[0-9]{0,20}")| {
            let expected = if raw.is_empty() {
                None
            } else if !raw.bytes().all(|b| b.is_ascii_digit()) {
                Some(Err("not a positive integer (digits only)"))
            } else {
                match raw.parse::<i64>() {
                    Err(_) => Some(Err("out of range for a 64-bit integer")),
                    Ok(0) => Some(Err("must be greater than zero")),
                    Ok(v) => Some(Ok(v)),
                }
            };
            if let Some(expected) = expected {
                let got = UserId::parse(&raw).map(UserId::get).map_err(|e| e.message);
                match expected {
                    Ok(v) => prop_assert_eq!(got, Ok(v)),
                    Err(why) => prop_assert!(got.as_ref().is_err_and(|m| m.contains(why)), "{:?}: {:?}", raw, got),
                }
            }
        });
    }

    #[test]
    fn event_ids_accept_any_uuid_version() {
        for raw in [
            "00000000-0000-0000-0000-000000000000",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "0191d5b2-3b1c-7cc3-9f7e-5f3f3c0f8a11",
            "F47AC10B58CC4372A5670E02B2C3D479",
        ] {
            assert!(EventId::parse(raw).is_ok(), "{raw}");
        }
    }
}
