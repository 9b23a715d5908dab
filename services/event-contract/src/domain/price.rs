//! Money as an exact decimal: never a float.

use std::fmt;

use rust_decimal::Decimal;

use crate::column::Column;
use crate::reject::{RejectReason, Rejection};

/// A unit price: exact, `0 <= price < 1,000,000`, at most 2 fraction digits (fits `numeric(8,2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Price(Decimal);

/// Most integer digits a price may have: `999999.99` is the largest price.
const MAX_INTEGER_DIGITS: usize = 6;
/// Most fraction digits a price may have.
const MAX_FRACTION_DIGITS: usize = 2;

impl Price {
    /// Parses `digits[.d[d]]`, e.g. `0`, `12.5`, `999999.99`. No sign, exponent or spaces: a
    /// producer that sends those is sending something other than a plain amount.
    ///
    /// # Errors
    /// [`RejectReason::BadPrice`] for anything else (the caller handles an empty field).
    pub fn parse(raw: &str) -> Result<Self, Rejection> {
        let bad = |why: &str| Rejection::field(RejectReason::BadPrice, Column::Price, raw, why);
        let (integer, fraction) = raw.split_once('.').unwrap_or((raw, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if raw.starts_with('-') {
            return Err(bad("must not be negative"));
        }
        if integer.is_empty() || !all_digits(integer) || !all_digits(fraction) {
            return Err(bad("not a plain decimal number"));
        }
        if raw.ends_with('.') {
            return Err(bad("a decimal point must be followed by digits"));
        }
        if fraction.len() > MAX_FRACTION_DIGITS {
            return Err(bad("more than 2 fraction digits"));
        }
        if integer.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
            return Err(bad("must be less than 1000000"));
        }
        if raw.len() <= MAX_INTEGER_DIGITS + 1 + MAX_FRACTION_DIGITS {
            // Digits checked above, and few of them: the value is the digits as an integer,
            // scaled by the fraction's length, as `from_str_exact` would make it (a test
            // compares the two), without its general parser.
            let mantissa = raw
                .bytes()
                .filter(u8::is_ascii_digit)
                .fold(0i64, |value, d| value * 10 + i64::from(d - b'0'));
            return Ok(Price(Decimal::new(mantissa, fraction.len() as u32)));
        }
        Decimal::from_str_exact(raw)
            .map(Price)
            .map_err(|e| bad(&e.to_string()))
    }

    /// Builds a price from a whole number of cents, if it is in range.
    pub fn from_cents(cents: i64) -> Option<Self> {
        (0..100_000_000)
            .contains(&cents)
            .then(|| Price(Decimal::new(cents, 2)))
    }

    /// The exact amount.
    pub fn as_decimal(&self) -> &Decimal {
        &self.0
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_amounts_are_the_decimals_from_str_exact_makes() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(5000), |(raw in "[0-9]{1,7}(\\.[0-9]{1,2})?|[0-9]{1,9}")| {
            let mine = Price::parse(&raw);
            if let Ok(price) = mine {
                let exact = Decimal::from_str_exact(&raw).unwrap();
                prop_assert_eq!(price.as_decimal().mantissa(), exact.mantissa());
                prop_assert_eq!(price.as_decimal().scale(), exact.scale());
            } else {
                prop_assert!(raw.trim_start_matches('0').split('.').next().unwrap().len() > 6);
            }
        });
    }

    #[test]
    fn plain_amounts_parse_exactly() {
        assert_eq!(Price::parse("0").map(|p| p.to_string()), Ok("0".into()));
        assert_eq!(Price::parse("12.5").ok(), Price::from_cents(1250));
        assert_eq!(
            Price::parse("999999.99").ok(),
            Price::from_cents(99_999_999)
        );
        assert_eq!(Price::parse("0001.10").ok(), Price::from_cents(110));
    }

    #[test]
    fn everything_else_is_a_bad_price() {
        for raw in [
            "-1", "1.234", "1000000", "1e3", "+1", " 1", "1.", ".5", "1,50", "NaN", "abc", "1.2.3",
        ] {
            let err = Price::parse(raw).unwrap_err();
            assert_eq!(err.reason, RejectReason::BadPrice, "{raw}");
            assert!(err.message.contains("price"), "{}", err.message);
        }
    }

    #[test]
    fn cents_out_of_range_are_refused() {
        assert!(Price::from_cents(-1).is_none());
        assert!(Price::from_cents(100_000_000).is_none());
    }
}
