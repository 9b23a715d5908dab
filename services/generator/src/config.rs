//! Generator configuration: built-in defaults < optional TOML file < `GENERATOR_*` environment <
//! command-line flags, merged by figment, then validated into [`Settings`] so a bad value stops
//! start-up with a message naming the key and the value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use service_support::config::{invalid, EnvLayer};
use service_support::declare_settings;
use service_support::settings::{Declared, Range};

/// Prefix of the environment variables that configure the generator, e.g. `GENERATOR_RATE`.
pub const ENV_PREFIX: &str = "GENERATOR_";

pub use service_support::LogFormat;

/// Default HTTP listen address: loopback, one port above the ingestor's 9100.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9101";

declare_settings! {
    /// Raw settings as layered by figment, each declared once: see
    /// [`service_support::settings`] for what the declaration gives and "Adding a setting" in
    /// `docs/configuration.md`.
    pub struct RawSettings {
        /// Directory the CSV files are published into (created if missing).
        out: PathBuf = PathBuf::from("data/incoming");
        /// Target events per second, over all files.
        rate: f64 = 1_000.0;
        /// Rows per file (duplicates and invalid rows included).
        rows: u64 = 1_000, range = Range::at_least(1);
        /// Number of files to write, then exit; 0 = run until stopped.
        files: u64 = 0;
        /// Random seed; the same seed gives the same events. Random when absent (and logged).
        seed: Option<u64> = None;
        /// RFC 3339 time of the first event; fixes the clock so output is byte-identical across
        /// runs.
        start_time: Option<String> = None;
        /// Share of rows that break the contract, with a reason chosen at random.
        invalid_ratio: f64 = 0.0, range = Range::between(0.0, 1.0);
        /// Share of rows that re-emit an earlier event (same event_id), also across files.
        duplicate_ratio: f64 = 0.0, range = Range::between(0.0, 1.0);
        /// Share of valid events stamped minutes in the past (late arrivals).
        late_ratio: f64 = 0.0, range = Range::between(0.0, 1.0);
        /// Products in the catalog.
        products: u32 = 5_000, range = Range::at_least(1);
        /// Distinct users.
        users: u32 = 100_000, range = Range::at_least(1);
        /// Shopping sessions in progress at once (their events interleave).
        sessions: u32 = 500, range = Range::at_least(1);
        /// `text` or `json`.
        log_format: LogFormat = LogFormat::Text;
        /// HTTP listen address (`host:port`) for `/metrics`, `/livez` and `/healthz`; port 0
        /// picks a free port (the bound address is logged in the start-up line).
        listen: String = DEFAULT_LISTEN.to_owned();
    }
}

/// Validated settings: every value is in range.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// See [`RawSettings::out`].
    pub out: PathBuf,
    /// See [`RawSettings::rate`]; positive and finite.
    pub rate: f64,
    /// See [`RawSettings::rows`]; at least 1.
    pub rows: u64,
    /// See [`RawSettings::files`].
    pub files: u64,
    /// See [`RawSettings::seed`].
    pub seed: Option<u64>,
    /// See [`RawSettings::start_time`].
    pub start_time: Option<DateTime<Utc>>,
    /// See [`RawSettings::invalid_ratio`]; in `[0, 1]`.
    pub invalid_ratio: f64,
    /// See [`RawSettings::duplicate_ratio`]; in `[0, 1]`, and with `invalid_ratio` at most 1.
    pub duplicate_ratio: f64,
    /// See [`RawSettings::late_ratio`]; in `[0, 1]`.
    pub late_ratio: f64,
    /// See [`RawSettings::products`]; at least 1.
    pub products: u32,
    /// See [`RawSettings::users`]; at least 1.
    pub users: u32,
    /// See [`RawSettings::sessions`]; at least 1.
    pub sessions: u32,
    /// See [`RawSettings::log_format`].
    pub log_format: LogFormat,
    /// See [`RawSettings::listen`]; a socket address (port 0 allowed).
    pub listen: SocketAddr,
}

pub use service_support::ConfigError;

/// Layers defaults, the optional TOML file, the environment and the flags, then validates.
///
/// # Errors
/// A [`ConfigError`] naming the key and the value that is wrong.
pub fn load(config_file: Option<&Path>, flags: &impl Serialize) -> Result<Settings, ConfigError> {
    service_support::config::layered::<RawSettings>(config_file, ENV, flags)?.validate()
}

/// The generator's environment: `GENERATOR_<KEY>`; `GENERATOR_CONFIG` names the TOML file.
const ENV: EnvLayer<'static> = EnvLayer {
    prefix: ENV_PREFIX,
    not_settings: &["config"],
    aliases: &[],
};

impl RawSettings {
    /// Checks every value: each key's declared range ([`Declared::check_ranges`]), and here
    /// what a declaration cannot say (a value to parse, a rule over two keys).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first out-of-range key.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(invalid(
                "rate",
                self.rate,
                "must be a positive number of events per second",
            ));
        }
        self.check_ranges()?;
        if self.invalid_ratio + self.duplicate_ratio > 1.0 {
            return Err(invalid(
                "duplicate_ratio",
                self.duplicate_ratio,
                "invalid_ratio + duplicate_ratio must not exceed 1",
            ));
        }
        let start_time = match &self.start_time {
            None => None,
            Some(raw) => Some(
                DateTime::parse_from_rfc3339(raw)
                    .map_err(|_| {
                        invalid(
                            "start_time",
                            raw,
                            "must be an RFC 3339 timestamp with offset",
                        )
                    })?
                    .with_timezone(&Utc),
            ),
        };
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                &self.listen,
                "must be a socket address like 127.0.0.1:9101",
            )
        })?;
        Ok(Settings {
            out: self.out,
            rate: self.rate,
            rows: self.rows,
            files: self.files,
            seed: self.seed,
            start_time,
            invalid_ratio: self.invalid_ratio,
            duplicate_ratio: self.duplicate_ratio,
            late_ratio: self.late_ratio,
            products: self.products,
            users: self.users,
            sessions: self.sessions,
            log_format: self.log_format,
            listen,
        })
    }
}

#[cfg(test)]
// figment's `Jail` closures return its large error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use figment::Jail;
    use service_support::declaration_tests;

    fn load_cli(args: &[&str]) -> Result<Settings, ConfigError> {
        let cli = Cli::parse_from(std::iter::once("generator").chain(args.iter().copied()));
        load(cli.config.as_deref(), &cli)
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        Jail::expect_with(|jail| {
            jail.create_file("gen.toml", "rate = 10.0\nrows = 20\nfiles = 30\nseed = 1")?;
            jail.set_env("GENERATOR_ROWS", "200");
            jail.set_env("GENERATOR_FILES", "300");
            let settings = load_cli(&["--config", "gen.toml", "--files", "3000"]).unwrap();
            assert_eq!(settings.rate, 10.0, "file beats default");
            assert_eq!(settings.rows, 200, "environment beats file");
            assert_eq!(settings.files, 3000, "flag beats environment");
            assert_eq!(settings.seed, Some(1));
            assert_eq!(settings.products, RawSettings::default().products);
            Ok(())
        });
    }

    #[test]
    fn listen_defaults_to_loopback_9101_and_layers_like_every_key() {
        Jail::expect_with(|jail| {
            assert_eq!(
                load_cli(&[]).unwrap().listen,
                "127.0.0.1:9101".parse().unwrap()
            );
            jail.create_file("gen.toml", "listen = \"0.0.0.0:9200\"")?;
            let settings = load_cli(&["--config", "gen.toml"]).unwrap();
            assert_eq!(settings.listen, "0.0.0.0:9200".parse().unwrap());
            jail.set_env("GENERATOR_LISTEN", "127.0.0.1:9300");
            let settings = load_cli(&["--config", "gen.toml"]).unwrap();
            assert_eq!(settings.listen, "127.0.0.1:9300".parse().unwrap());
            let settings = load_cli(&["--listen", "127.0.0.1:0"]).unwrap();
            assert_eq!(settings.listen.port(), 0, "flag beats environment");
            Ok(())
        });
    }

    #[test]
    fn a_badly_typed_value_names_key_and_value() {
        Jail::expect_with(|jail| {
            jail.set_env("GENERATOR_RATE", "fast");
            let err = load_cli(&[]).unwrap_err().to_string();
            assert!(
                err.to_lowercase().contains("rate") && err.contains("\"fast\""),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn out_of_range_values_name_key_and_value() {
        for (args, key, value) in [
            (&["--rate", "0"][..], "rate", "0"),
            (&["--invalid-ratio", "1.5"][..], "invalid_ratio", "1.5"),
            (&["--rows", "0"][..], "rows", "0"),
            (&["--start-time", "noon"][..], "start_time", "noon"),
            (&["--listen", "localhost"][..], "listen", "localhost"),
            (
                &["--listen", "127.0.0.1:99999"][..],
                "listen",
                "127.0.0.1:99999",
            ),
            (
                &["--invalid-ratio", "0.6", "--duplicate-ratio", "0.5"][..],
                "duplicate_ratio",
                "0.5",
            ),
        ] {
            let err = load_cli(args).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}` = `{value}`")), "{err}");
        }
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        Jail::expect_with(|jail| {
            jail.create_file("gen.toml", "rat = 10.0")?;
            let err = load_cli(&["--config", "gen.toml"]).unwrap_err().to_string();
            assert!(err.contains("rat"), "{err}");
            let err = load_cli(&["--config", "nope.toml"])
                .unwrap_err()
                .to_string();
            assert!(err.contains("nope.toml"), "{err}");
            Ok(())
        });
    }

    // One declaration per setting: the docs test (every key documented with its variable,
    // real default, meaning and range, every documented key real) and the flags test.
    declaration_tests!(
        RawSettings,
        ENV_PREFIX,
        Cli,
        "../../../docs/configuration.md"
    );
}
