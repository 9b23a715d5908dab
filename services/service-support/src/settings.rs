//! One declaration per setting. Before this module a setting lived in six places (the raw
//! struct, its `Default`, the range checks, the validated struct, the flags, the docs table) and
//! nothing tied them together; now [`declare_settings!`](crate::declare_settings) writes the
//! raw struct, its `Default` and its per-key range checks from one list, and records each key's
//! name, doc and range as [`Key`]s, which the services' tests hold `docs/configuration.md` and
//! the command line to (see [`crate::docs_check::docs_problems`] and
//! [`crate::docs_check::flag_problems`]).
//!
//! # Adding a setting
//! One entry in the service's `declare_settings!` list (doc lines, `name: Type = default`, and
//! `, range = ...` when one value alone can be out of range), its use, and its row in
//! `docs/configuration.md`, which the docs test demands. The TOML key is the name, the
//! environment variable `<PREFIX><NAME>` upper-cased. Checks that involve two keys or parse a
//! value (`pool_size > loaders`, a socket address) stay in the service's `validate()`.

use std::fmt::Display;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{invalid, ConfigError};

/// Declares a service's raw settings once: the struct (serde, unknown keys refused, every
/// missing key defaulted), its `Default`, and its [`Declared`] table of keys with their range
/// checks. Each entry is
///
/// ```text
/// /// Doc line(s): what the key means (at least one: the macro refuses an entry without).
/// name: Type = default_expression, range = Range::at_least(1);
/// ```
///
/// with `, range = ...` optional. The calling crate needs `serde` (the derives name it).
#[macro_export]
macro_rules! declare_settings {
    (@bounds) => { ::std::vec::Vec::new() };
    (@bounds $range:expr) => { $crate::settings::Range::bounds(&$range) };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $field:ident : $ty:ty = $default:expr $(, range = $range:expr)? ;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        $vis struct $name {
            $(
                $(#[doc = $doc])+
                pub $field: $ty,
            )*
        }

        impl ::std::default::Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }

        impl $crate::settings::Declared for $name {
            fn keys() -> ::std::vec::Vec<$crate::settings::Key> {
                ::std::vec![$(
                    $crate::settings::Key {
                        name: ::std::stringify!($field),
                        doc: ::std::concat!($($doc, "\n"),+),
                        bounds: $crate::declare_settings!(@bounds $($range)?),
                    },
                )*]
            }

            fn check_ranges(&self) -> ::std::result::Result<(), $crate::ConfigError> {
                $($(
                    $crate::settings::Range::check(&$range, ::std::stringify!($field), &self.$field)?;
                )?)*
                Ok(())
            }
        }
    };
}

/// The two tests that hold a service to its declarations, for its `config.rs` test module:
/// `declaration_tests!(RawSettings, ENV_PREFIX, Cli, "../../../docs/configuration.md")`, with
/// the docs path relative to the calling file (as `include_str!` takes it).
///
/// - `every_setting_is_documented_with_its_real_default`: [`crate::docs_check::docs_problems`].
/// - `every_flag_is_a_declared_setting_with_its_real_default`:
///   [`crate::docs_check::flag_problems`], for the clap parser `Cli`; `--config` and
///   `--ready-file` are flags of every service and no settings.
#[macro_export]
macro_rules! declaration_tests {
    ($raw:ty, $prefix:expr, $cli:ty, $docs:literal) => {
        #[test]
        fn every_setting_is_documented_with_its_real_default() {
            let docs = ::std::include_str!($docs);
            let problems = $crate::docs_check::docs_problems::<$raw>(docs, $prefix);
            ::std::assert!(problems.is_empty(), "{}: {problems:#?}", $docs);
        }

        #[test]
        fn every_flag_is_a_declared_setting_with_its_real_default() {
            let docs = ::std::include_str!($docs);
            let command = <$cli as ::clap::CommandFactory>::command();
            let problems = $crate::docs_check::flag_problems::<$raw>(
                &command,
                &["config", "ready-file"],
                docs,
                $prefix,
            );
            ::std::assert!(problems.is_empty(), "{problems:#?}");
        }
    };
}

/// What [`declare_settings!`](crate::declare_settings) records of a settings struct.
pub trait Declared {
    /// Every key, in declaration order.
    fn keys() -> Vec<Key>;

    /// Checks every key that declares a range, in declaration order.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first key out of its range.
    fn check_ranges(&self) -> Result<(), ConfigError>;
}

/// One declared key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The TOML key, and (upper-cased, prefixed) the environment variable.
    pub name: &'static str,
    /// The declaration's doc lines.
    pub doc: &'static str,
    /// The bounds of its declared range, as written (e.g. `["1"]` for at least 1), which the
    /// docs table's range cell must mention.
    pub bounds: Vec<String>,
}

/// The values one key accepts, whatever its neighbours hold. The error messages are the ones
/// users have seen since the first release: keep them.
#[derive(Debug, Clone, Copy)]
pub enum Range<B> {
    /// `value >= min`: "must be at least {min}" (counts and intervals where 0 would stall the
    /// service or divide by zero).
    AtLeast(B),
    /// `value <= max`: "must be at most {max} ({why})".
    AtMost(B, &'static str),
    /// `min <= value <= max`: "must be between {min} and {max}".
    Between(B, B),
}

impl<B: PartialOrd + Display + Copy> Range<B> {
    /// At least `min`.
    pub const fn at_least(min: B) -> Self {
        Range::AtLeast(min)
    }

    /// At most `max`, for the reason `why` (shown in brackets after the bound).
    pub const fn at_most(max: B, why: &'static str) -> Self {
        Range::AtMost(max, why)
    }

    /// From `min` to `max`, both included.
    pub const fn between(min: B, max: B) -> Self {
        Range::Between(min, max)
    }

    /// The bounds, rendered as the error message renders them.
    pub fn bounds(&self) -> Vec<String> {
        match self {
            Range::AtLeast(min) => vec![min.to_string()],
            Range::AtMost(max, _) => vec![max.to_string()],
            Range::Between(min, max) => vec![min.to_string(), max.to_string()],
        }
    }

    /// Checks `key`'s `value` (an unset optional value is in range).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key, the value and the range.
    pub fn check<V: InRange<Bound = B>>(
        &self,
        key: &'static str,
        value: &V,
    ) -> Result<(), ConfigError> {
        let Some(value) = value.range_value() else {
            return Ok(());
        };
        // Written as "not inside" so that NaN is out of every range.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let reason = match *self {
            Range::AtLeast(min) if !(value >= min) => format!("must be at least {min}"),
            Range::AtMost(max, why) if !(value <= max) => format!("must be at most {max} ({why})"),
            Range::Between(min, max) if !(min <= value && value <= max) => {
                format!("must be between {min} and {max}")
            }
            _ => return Ok(()),
        };
        Err(invalid(key, value, reason))
    }
}

/// A setting's value as its range sees it: numbers as themselves, [`Millis`] as milliseconds,
/// an optional value only when set.
pub trait InRange {
    /// What the bounds are written in.
    type Bound: PartialOrd + Display + Copy;
    /// The value to compare, `None` when unset.
    fn range_value(&self) -> Option<Self::Bound>;
}

macro_rules! in_range_as_itself {
    ($($t:ty),*) => {$(
        impl InRange for $t {
            type Bound = $t;
            fn range_value(&self) -> Option<$t> {
                Some(*self)
            }
        }
    )*};
}
in_range_as_itself!(u32, u64, usize, f64);

impl<T: InRange> InRange for Option<T> {
    type Bound = T::Bound;
    fn range_value(&self) -> Option<T::Bound> {
        self.as_ref().and_then(InRange::range_value)
    }
}

/// A duration written in milliseconds (the `_ms` keys): read from and written as a whole
/// number, used as a [`Duration`], so validated settings need no conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "u64", into = "u64")]
pub struct Millis(Duration);

impl Millis {
    /// `ms` milliseconds.
    pub const fn ms(ms: u64) -> Self {
        Millis(Duration::from_millis(ms))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Whole milliseconds (what was written; saturates, which a `u64` written value never
    /// reaches).
    pub fn as_ms(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<u64> for Millis {
    fn from(ms: u64) -> Self {
        Millis::ms(ms)
    }
}

impl From<Millis> for u64 {
    fn from(value: Millis) -> Self {
        value.as_ms()
    }
}

impl From<Millis> for Duration {
    fn from(value: Millis) -> Self {
        value.0
    }
}

impl Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_ms().fmt(f)
    }
}

impl InRange for Millis {
    type Bound = u64;
    fn range_value(&self) -> Option<u64> {
        Some(self.as_ms())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    crate::declare_settings! {
        /// A settings struct for the tests.
        struct Demo {
            /// A count.
            count: u32 = 3, range = Range::at_least(1);
            /// A wait.
            /// Second line.
            wait_ms: Millis = Millis::ms(50), range = Range::at_most(100, "a tenth of a second");
            /// A share.
            share: Option<f64> = None, range = Range::between(0.0, 1.0);
            /// A name, any.
            name: String = "x".to_owned();
        }
    }

    #[test]
    fn one_declaration_gives_the_struct_its_defaults_its_keys_and_its_checks() {
        let demo = Demo::default();
        assert_eq!(demo.wait_ms.get(), Duration::from_millis(50));
        assert_eq!(
            serde_json::to_value(&demo).unwrap(),
            serde_json::json!({ "count": 3, "wait_ms": 50, "share": null, "name": "x" })
        );
        let keys = Demo::keys();
        assert_eq!(
            keys.iter().map(|k| k.name).collect::<Vec<_>>(),
            ["count", "wait_ms", "share", "name"]
        );
        assert_eq!(keys[1].doc, " A wait.\n Second line.\n");
        assert_eq!(keys[1].bounds, ["100"]);
        assert_eq!(keys[2].bounds, ["0", "1"]);
        assert!(keys[3].bounds.is_empty());
        assert!(demo.check_ranges().is_ok());

        let errors = [
            Demo {
                count: 0,
                ..Demo::default()
            },
            Demo {
                wait_ms: Millis::ms(101),
                ..Demo::default()
            },
            Demo {
                share: Some(1.5),
                ..Demo::default()
            },
            Demo {
                share: Some(f64::NAN),
                ..Demo::default()
            },
        ]
        .map(|d| d.check_ranges().unwrap_err().to_string());
        assert_eq!(
            errors,
            [
                "invalid configuration: key `count` = `0`: must be at least 1",
                "invalid configuration: key `wait_ms` = `101`: must be at most 100 (a tenth of a second)",
                "invalid configuration: key `share` = `1.5`: must be between 0 and 1",
                "invalid configuration: key `share` = `NaN`: must be between 0 and 1",
            ]
        );
        let read: Demo = serde_json::from_str(r#"{"wait_ms": 7}"#).unwrap();
        assert_eq!(read.wait_ms.get(), Duration::from_millis(7));
        assert!(serde_json::from_str::<Demo>(r#"{"wait": 7}"#).is_err());
    }
}
