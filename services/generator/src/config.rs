//! Generator configuration: built-in defaults < optional TOML file < `GENERATOR_*` environment <
//! command-line flags, merged by figment, then validated into [`Settings`] so a bad value stops
//! start-up with a message naming the key and the value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service_support::config::{at_least_one, invalid, EnvLayer};

/// Prefix of the environment variables that configure the generator, e.g. `GENERATOR_RATE`.
pub const ENV_PREFIX: &str = "GENERATOR_";

pub use service_support::LogFormat;

/// Raw settings as layered by figment; every key here is documented in `docs/configuration.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSettings {
    /// Directory the CSV files are published into (created if missing).
    pub out: PathBuf,
    /// Target events per second, over all files.
    pub rate: f64,
    /// Rows per file (duplicates and invalid rows included).
    pub rows: u64,
    /// Number of files to write, then exit; 0 = run until stopped.
    pub files: u64,
    /// Random seed; the same seed gives the same events. Random when absent (and logged).
    pub seed: Option<u64>,
    /// RFC 3339 time of the first event; fixes the clock so output is byte-identical across runs.
    pub start_time: Option<String>,
    /// Share of rows that break the contract, with a reason chosen at random.
    pub invalid_ratio: f64,
    /// Share of rows that re-emit an earlier event (same event_id), also across files.
    pub duplicate_ratio: f64,
    /// Share of valid events stamped minutes in the past (late arrivals).
    pub late_ratio: f64,
    /// Products in the catalog.
    pub products: u32,
    /// Distinct users.
    pub users: u32,
    /// Shopping sessions in progress at once (their events interleave).
    pub sessions: u32,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// HTTP listen address (`host:port`) for `/metrics`, `/livez` and `/healthz`; port 0 picks a
    /// free port (the bound address is logged in the start-up line).
    pub listen: String,
}

/// Default HTTP listen address: loopback, one port above the ingestor's 9100.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9101";

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            out: PathBuf::from("data/incoming"),
            rate: 1_000.0,
            rows: 1_000,
            files: 0,
            seed: None,
            start_time: None,
            invalid_ratio: 0.0,
            duplicate_ratio: 0.0,
            late_ratio: 0.0,
            products: 5_000,
            users: 100_000,
            sessions: 500,
            log_format: LogFormat::Text,
            listen: DEFAULT_LISTEN.to_owned(),
        }
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
    /// Checks every value's range.
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
        for (key, value) in [
            ("invalid_ratio", self.invalid_ratio),
            ("duplicate_ratio", self.duplicate_ratio),
            ("late_ratio", self.late_ratio),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid(key, value, "must be between 0 and 1"));
            }
        }
        if self.invalid_ratio + self.duplicate_ratio > 1.0 {
            return Err(invalid(
                "duplicate_ratio",
                self.duplicate_ratio,
                "invalid_ratio + duplicate_ratio must not exceed 1",
            ));
        }
        at_least_one(&[
            ("rows", self.rows),
            ("products", u64::from(self.products)),
            ("users", u64::from(self.users)),
            ("sessions", u64::from(self.sessions)),
        ])?;
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

    /// One declaration per setting: every key of `RawSettings` is in docs/configuration.md
    /// with its `GENERATOR_*` variable and its real default, and every documented key is real.
    #[test]
    fn every_setting_is_documented_with_its_real_default() {
        let docs = include_str!("../../../docs/configuration.md");
        let documented = service_support::config::documented_keys(docs, "GENERATOR_");
        let defaults = serde_json::to_value(RawSettings::default()).unwrap();
        let problems = service_support::config::undocumented(&defaults, &documented, "GENERATOR_");
        assert!(problems.is_empty(), "docs/configuration.md: {problems:#?}");
    }
}
