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
        /// Where the rows go: `directory` (CSV files published into `out`) or `kafka` (one
        /// message per row, to `kafka_topic`).
        sink: SinkKind = SinkKind::Directory;
        /// Kafka bootstrap servers, `host:port[,host:port...]`; required with `sink = kafka`.
        kafka_brokers: Option<String> = None;
        /// Kafka topic the events are produced to.
        kafka_topic: String = DEFAULT_KAFKA_TOPIC.to_owned();
        /// Message format: `csv` (the contract's line, no header) or `json` (an object with the
        /// six contract fields as strings).
        kafka_format: KafkaFormat = KafkaFormat::Csv;
        /// Extra librdkafka producer properties, `key=value` separated by `;` or line ends
        /// (SASL, TLS, tuning); passed through as written.
        kafka_client_options: Option<String> = None;
        /// File holding the SASL password (e.g. a Compose secret), set as `sasl.password`.
        kafka_sasl_password_file: Option<PathBuf> = None;
    }
}

/// Default of `kafka_topic`.
pub const DEFAULT_KAFKA_TOPIC: &str = "events";

/// Where the rows go.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// CSV files published atomically into a directory.
    #[default]
    Directory,
    /// One Kafka message per row, from an idempotent producer.
    Kafka,
}

/// How a row is encoded as a Kafka message.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum KafkaFormat {
    /// The contract's CSV line, without header or line end.
    #[default]
    Csv,
    /// A JSON object with the six contract columns as string fields.
    Json,
}

/// The validated sink: where the rows go.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkSettings {
    /// CSV files in [`Settings::out`].
    Directory,
    /// Messages to a Kafka topic.
    Kafka(KafkaSettings),
}

/// Producer properties the Kafka sink sets itself, which `kafka_client_options` may not
/// override: the brokers have their own key, and ordering per user and no duplicates from
/// retries rest on the idempotent producer with `acks=all`.
pub const KAFKA_FIXED_PROPERTIES: [&str; 5] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
];

/// The validated Kafka sink settings.
#[derive(Clone, PartialEq)]
pub struct KafkaSettings {
    /// See [`RawSettings::kafka_brokers`]; non-empty, no blanks.
    pub brokers: String,
    /// See [`RawSettings::kafka_topic`]; a legal Kafka topic name.
    pub topic: String,
    /// See [`RawSettings::kafka_format`].
    pub format: KafkaFormat,
    /// `kafka_client_options` parsed, each property known to librdkafka with a value it
    /// accepts, plus `sasl.password` from `kafka_sasl_password_file`.
    pub client_options: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaSettings {
    /// Secrets (any property whose name mentions a password or secret) are masked: settings
    /// end up in logs and test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: Vec<(&str, &str)> = self
            .client_options
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("format", &self.format)
            .field("client_options", &options)
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, ...).
pub fn is_secret(property: &str) -> bool {
    property.contains("password") || property.contains("secret")
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
    /// See [`RawSettings::sink`]; the Kafka keys are read (and checked) only for `kafka`.
    pub sink: SinkSettings,
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
        let sink = match self.sink {
            SinkKind::Directory => SinkSettings::Directory,
            SinkKind::Kafka => SinkSettings::Kafka(self.kafka_settings()?),
        };
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
            sink,
        })
    }

    /// The Kafka keys, checked: brokers given, a legal topic name, client options that
    /// librdkafka accepts one by one, a readable password file.
    fn kafka_settings(&self) -> Result<KafkaSettings, ConfigError> {
        let brokers = self.kafka_brokers.as_deref().unwrap_or_default().trim();
        if brokers.is_empty() {
            return Err(invalid(
                "kafka_brokers",
                brokers,
                "is required with sink = kafka (host:port[,host:port...])",
            ));
        }
        if brokers
            .split(',')
            .any(|b| b.trim().is_empty() || b.trim().contains(char::is_whitespace))
        {
            return Err(invalid(
                "kafka_brokers",
                brokers,
                "must be host:port entries separated by commas",
            ));
        }
        let topic = &self.kafka_topic;
        // Kafka's own rule (kafka.common.Topic): 1 to 249 of [a-zA-Z0-9._-], not `.` or `..`.
        let legal = !topic.is_empty()
            && topic.len() <= 249
            && topic != "."
            && topic != ".."
            && topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !legal {
            return Err(invalid(
                "kafka_topic",
                topic,
                "must be 1 to 249 characters of a-z, A-Z, 0-9, `.`, `_` and `-`",
            ));
        }
        let mut client_options =
            parse_client_options(self.kafka_client_options.as_deref().unwrap_or_default())?;
        if let Some(path) = &self.kafka_sasl_password_file {
            let password = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "kafka_sasl_password_file",
                    path.display(),
                    format!("cannot be read ({e})"),
                )
            })?;
            if client_options.iter().any(|(k, _)| k == "sasl.password") {
                return Err(invalid(
                    "kafka_sasl_password_file",
                    path.display(),
                    "conflicts with sasl.password in kafka_client_options: give the password once",
                ));
            }
            client_options.push((
                "sasl.password".to_owned(),
                password.trim_end_matches(['\r', '\n']).to_owned(),
            ));
        }
        Ok(KafkaSettings {
            brokers: brokers.to_owned(),
            topic: topic.clone(),
            format: self.kafka_format,
            client_options,
        })
    }
}

/// Parses `kafka_client_options`: `key=value` entries separated by `;` or line ends, blank
/// entries and `#` comment lines skipped. Each property is handed to librdkafka on its own, so
/// an unknown name or a value it refuses stops start-up naming that entry (a secret's value is
/// never shown).
///
/// # Errors
/// [`ConfigError::Invalid`] for `kafka_client_options` naming the entry.
pub fn parse_client_options(raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut options: Vec<(String, String)> = Vec::new();
    for entry in raw.split(['\n', ';']).map(str::trim) {
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(invalid(
                "kafka_client_options",
                entry,
                "each entry must be key=value (entries separated by `;` or line ends)",
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        let shown = if is_secret(key) {
            format!("{key}=***")
        } else {
            format!("{key}={value}")
        };
        if KAFKA_FIXED_PROPERTIES.contains(&key) {
            return Err(invalid(
                "kafka_client_options",
                shown,
                "is set by the generator (brokers come from kafka_brokers; the producer is \
                 always idempotent with acks=all)",
            ));
        }
        if options.iter().any(|(k, _)| k == key) {
            return Err(invalid(
                "kafka_client_options",
                shown,
                "sets a property a second time",
            ));
        }
        let mut one = rdkafka::ClientConfig::new();
        one.set(key, value);
        if let Err(e) = one.create_native_config() {
            return Err(invalid(
                "kafka_client_options",
                shown,
                format!("refused by librdkafka ({e})"),
            ));
        }
        options.push((key.to_owned(), value.to_owned()));
    }
    Ok(options)
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

    #[test]
    fn the_kafka_sink_needs_brokers_and_a_legal_topic() {
        Jail::expect_with(|_| {
            let default = load_cli(&[]).unwrap();
            assert_eq!(
                default.sink,
                SinkSettings::Directory,
                "directory by default"
            );
            let err = load_cli(&["--sink", "kafka"]).unwrap_err().to_string();
            assert!(err.contains("`kafka_brokers` = ``"), "{err}");
            for (args, key, value) in [
                (
                    &["--sink", "kafka", "--kafka-brokers", "a:9092, ,b:9092"][..],
                    "kafka_brokers",
                    "a:9092, ,b:9092",
                ),
                (
                    &[
                        "--sink",
                        "kafka",
                        "--kafka-brokers",
                        "k:9092",
                        "--kafka-topic",
                        "ev ents",
                    ][..],
                    "kafka_topic",
                    "ev ents",
                ),
                (
                    &[
                        "--sink",
                        "kafka",
                        "--kafka-brokers",
                        "k:9092",
                        "--kafka-topic",
                        "..",
                    ][..],
                    "kafka_topic",
                    "..",
                ),
            ] {
                let err = load_cli(args).unwrap_err().to_string();
                assert!(err.contains(&format!("`{key}` = `{value}`")), "{err}");
            }
            let settings = load_cli(&[
                "--sink",
                "kafka",
                "--kafka-brokers",
                "k1:9092,k2:9092",
                "--kafka-format",
                "json",
            ])
            .unwrap();
            let SinkSettings::Kafka(kafka) = settings.sink else {
                panic!("kafka asked for");
            };
            assert_eq!(kafka.brokers, "k1:9092,k2:9092");
            assert_eq!(kafka.topic, DEFAULT_KAFKA_TOPIC);
            assert_eq!(kafka.format, KafkaFormat::Json);
            assert!(kafka.client_options.is_empty());
            Ok(())
        });
    }

    #[test]
    fn a_bad_sink_name_names_key_and_value() {
        Jail::expect_with(|jail| {
            jail.set_env("GENERATOR_SINK", "kafak");
            let err = load_cli(&[]).unwrap_err().to_string();
            assert!(
                err.to_lowercase().contains("sink") && err.contains("kafak"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn client_options_pass_through_and_bad_ones_are_named_without_secrets() {
        Jail::expect_with(|jail| {
            jail.set_env("GENERATOR_SINK", "kafka");
            jail.set_env("GENERATOR_KAFKA_BROKERS", "k:9092");
            jail.set_env(
                "GENERATOR_KAFKA_CLIENT_OPTIONS",
                "security.protocol=SASL_PLAINTEXT; sasl.mechanism=PLAIN\n# a comment\nsasl.username=gen;sasl.password=hunter2\n",
            );
            let SinkSettings::Kafka(kafka) = load_cli(&[]).unwrap().sink else {
                panic!("kafka asked for");
            };
            assert_eq!(
                kafka.client_options,
                [
                    ("security.protocol", "SASL_PLAINTEXT"),
                    ("sasl.mechanism", "PLAIN"),
                    ("sasl.username", "gen"),
                    ("sasl.password", "hunter2"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
            );
            let shown = format!("{kafka:?}");
            assert!(
                !shown.contains("hunter2") && shown.contains("sasl.username"),
                "{shown}"
            );
            for (options, shown) in [
                ("linger.ms", "linger.ms"),
                ("no.such.property=1", "no.such.property=1"),
                ("linger.ms=soon", "linger.ms=soon"),
                ("acks=1", "acks=1"),
                (
                    "bootstrap.servers=elsewhere:9092",
                    "bootstrap.servers=elsewhere:9092",
                ),
                ("linger.ms=5;linger.ms=6", "linger.ms=6"),
                ("sasl.password=a;sasl.password=hunter2", "sasl.password=***"),
            ] {
                jail.set_env("GENERATOR_KAFKA_CLIENT_OPTIONS", options);
                let err = load_cli(&[]).unwrap_err().to_string();
                assert!(
                    err.contains(&format!("`kafka_client_options` = `{shown}`")),
                    "{options}: {err}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn a_sasl_password_file_supplies_the_password_and_a_missing_one_is_named() {
        Jail::expect_with(|jail| {
            jail.set_env("GENERATOR_SINK", "kafka");
            jail.set_env("GENERATOR_KAFKA_BROKERS", "k:9092");
            jail.create_file("secret", "s3cret\n")?;
            jail.set_env("GENERATOR_KAFKA_SASL_PASSWORD_FILE", "secret");
            let SinkSettings::Kafka(kafka) = load_cli(&[]).unwrap().sink else {
                panic!("kafka asked for");
            };
            assert_eq!(
                kafka.client_options,
                [("sasl.password".to_owned(), "s3cret".to_owned())]
            );
            jail.set_env("GENERATOR_KAFKA_CLIENT_OPTIONS", "sasl.password=other");
            let err = load_cli(&[]).unwrap_err().to_string();
            assert!(
                err.contains("`kafka_sasl_password_file` = `secret`"),
                "{err}"
            );
            jail.set_env("GENERATOR_KAFKA_CLIENT_OPTIONS", "");
            jail.set_env("GENERATOR_KAFKA_SASL_PASSWORD_FILE", "missing");
            let err = load_cli(&[]).unwrap_err().to_string();
            assert!(
                err.contains("`kafka_sasl_password_file` = `missing`"),
                "{err}"
            );
            // The directory sink does not read the Kafka keys.
            assert!(load_cli(&["--sink", "directory"]).is_ok());
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
