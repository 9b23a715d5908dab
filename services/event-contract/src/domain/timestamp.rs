//! Event time: RFC 3339 with an offset, not too far in the future.

use std::fmt;

use chrono::{
    DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, SubsecRound, Utc,
};

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
        let utc = match parse_utc_z(raw) {
            Some(utc) => utc,
            None => DateTime::parse_from_rfc3339(raw)
                .map_err(|e| {
                    Rejection::field(
                        RejectReason::BadTimestamp,
                        Column::EventTimestamp,
                        raw,
                        &format!("not an RFC 3339 timestamp with offset ({e})"),
                    )
                })?
                .with_timezone(&Utc),
        };
        let ts = EventTimestamp::from_utc(utc);
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

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the form producers (and the generator) write, read
/// directly: chrono's general RFC 3339 parser cost as much as the other five fields together.
/// `None` for any other form and for any value this path would have to judge (an impossible
/// date or time, a leap second, more than nine fraction digits): those go through chrono's
/// parser, so what is accepted and every rejection message stay exactly chrono's
/// (`the_z_form_reads_as_chrono_reads_it` compares the two).
fn parse_utc_z(raw: &str) -> Option<DateTime<Utc>> {
    let b = raw.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[b.len() - 1] != b'Z'
    {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |value, &d| {
            d.is_ascii_digit().then(|| value * 10 + u32::from(d - b'0'))
        })
    };
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            number(digits)? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let second = number(&b[17..19])?;
    if second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(number(&b[0..4])?).ok()?,
        number(&b[5..7])?,
        number(&b[8..10])?,
    )?;
    let time =
        NaiveTime::from_hms_nano_opt(number(&b[11..13])?, number(&b[14..16])?, second, nanos)?;
    Some(NaiveDateTime::new(date, time).and_utc())
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
    fn the_z_form_reads_as_chrono_reads_it() {
        use proptest::prelude::*;
        let fraction = prop::option::of(prop::collection::vec(0u8..10, 0..12));
        let parts = (
            0u32..10_000,
            0u32..14,
            0u32..33,
            0u32..26,
            0u32..62,
            0u32..62,
            fraction,
        );
        proptest!(ProptestConfig::with_cases(20_000), |((y, mo, d, h, mi, s, f) in parts)| {
            let fraction = f.map_or(String::new(), |digits| {
                format!(".{}", digits.iter().map(|d| d.to_string()).collect::<String>())
            });
            let raw = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}Z");
            let chrono = DateTime::parse_from_rfc3339(&raw).map(|t| t.with_timezone(&Utc));
            match parse_utc_z(&raw) {
                Some(fast) => prop_assert_eq!(Ok(fast), chrono, "{}", raw),
                // Left to chrono: only what this path does not judge.
                None => prop_assert!(
                    chrono.is_err() || s > 59 || fraction.len() > 10,
                    "{} is valid but not read directly", raw
                ),
            }
        });
        for raw in [
            "2026-11-21T11:00:00z",
            "2026-11-21t11:00:00Z",
            "2026-11-21T11:00:00+00:00",
            "2026-11-21T11:00:00.Z",
            "+2026-11-21T11:00:00Z",
            "2026-11-21T11:00Z",
            "２０26-11-21T11:00:00Z",
        ] {
            assert_eq!(parse_utc_z(raw), None, "{raw}");
        }
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
