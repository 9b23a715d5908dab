//! Event time: RFC 3339 with an offset, not too far in the future.

use std::fmt;

use chrono::{DateTime, Duration, SecondsFormat, SubsecRound, Utc};

use crate::column::Column;
use crate::reject::{RejectReason, Rejection};

use super::ids::require;

/// How far ahead of the validating clock an event may be stamped by default: producers' clocks
/// drift, but an event hours ahead is a broken clock, not skew.
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::minutes(5);

/// What validation is relative to: the current time and the tolerated clock skew.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext {
    /// "Now" for the future-timestamp rule.
    pub now: DateTime<Utc>,
    /// How far past `now` an event timestamp may be.
    pub max_future_skew: Duration,
}

impl ValidationContext {
    /// Validation at `now` with the default skew.
    pub fn at(now: DateTime<Utc>) -> Self {
        ValidationContext {
            now,
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
        }
    }

    /// Validation against the system clock with the default skew.
    pub fn now() -> Self {
        ValidationContext::at(Utc::now())
    }
}

/// When the event happened, normalised to UTC at microsecond precision, the resolution of
/// PostgreSQL's `timestamptz`: what we hold is exactly what the database will store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventTimestamp(DateTime<Utc>);

impl EventTimestamp {
    /// Parses RFC 3339 (an offset is mandatory) and checks it is not beyond the allowed skew.
    ///
    /// # Errors
    /// [`RejectReason::MissingField`] when empty, [`RejectReason::BadTimestamp`] when not RFC
    /// 3339, [`RejectReason::FutureTimestamp`] when later than `now + max_future_skew`.
    pub fn parse(raw: &str, ctx: &ValidationContext) -> Result<Self, Rejection> {
        require(raw, Column::EventTimestamp)?;
        let parsed = DateTime::parse_from_rfc3339(raw).map_err(|e| {
            Rejection::field(
                RejectReason::BadTimestamp,
                Column::EventTimestamp,
                raw,
                &format!("not an RFC 3339 timestamp with offset ({e})"),
            )
        })?;
        let ts = EventTimestamp::from_utc(parsed.with_timezone(&Utc));
        if ts.0 > ctx.now + ctx.max_future_skew {
            return Err(Rejection::field(
                RejectReason::FutureTimestamp,
                Column::EventTimestamp,
                raw,
                &format!(
                    "more than {}s ahead of the ingest clock ({})",
                    ctx.max_future_skew.num_seconds(),
                    ctx.now.to_rfc3339_opts(SecondsFormat::Millis, true)
                ),
            ));
        }
        Ok(ts)
    }

    /// Wraps a UTC time, truncating it to microseconds.
    pub fn from_utc(time: DateTime<Utc>) -> Self {
        EventTimestamp(time.trunc_subsecs(6))
    }

    /// The instant.
    pub fn as_utc(&self) -> &DateTime<Utc> {
        &self.0
    }
}

impl fmt::Display for EventTimestamp {
    /// RFC 3339 in UTC with `Z`, with as many fraction digits as needed (0, 3 or 6).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ValidationContext {
        ValidationContext::at(
            DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z")
                .unwrap()
                .into(),
        )
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let ts = EventTimestamp::parse("2026-11-21T12:30:00.5+01:00", &ctx()).unwrap();
        assert_eq!(ts.to_string(), "2026-11-21T11:30:00.500Z");
    }

    #[test]
    fn nanoseconds_are_truncated_to_microseconds() {
        let ts = EventTimestamp::parse("2026-11-21T11:00:00.123456789Z", &ctx()).unwrap();
        assert_eq!(ts.to_string(), "2026-11-21T11:00:00.123456Z");
    }

    #[test]
    fn skew_is_tolerated_up_to_the_limit() {
        assert!(EventTimestamp::parse("2026-11-21T12:05:00Z", &ctx()).is_ok());
        let err = EventTimestamp::parse("2026-11-21T12:05:00.001Z", &ctx()).unwrap_err();
        assert_eq!(err.reason, RejectReason::FutureTimestamp);
    }

    #[test]
    fn a_timestamp_without_offset_is_bad() {
        for raw in [
            "2026-11-21T11:00:00",
            "2026-11-21",
            "yesterday",
            "2026-13-01T00:00:00Z",
        ] {
            let err = EventTimestamp::parse(raw, &ctx()).unwrap_err();
            assert_eq!(err.reason, RejectReason::BadTimestamp, "{raw}");
        }
    }
}
