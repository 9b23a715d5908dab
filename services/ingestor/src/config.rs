//! Ingestor configuration: built-in defaults < optional TOML file (`--config`) < `INGESTOR_*`
//! environment (and `DATABASE_URL`) < command-line flags, merged by figment and validated into
//! [`Settings`], so a bad value stops start-up with a message naming the key and the value.
//! Every key is documented in `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::tls::{take_tls_parameters, SslMode, Tls, TlsParameters};
use event_contract::ExtraColumnPolicy;
use serde::{Deserialize, Serialize};
use service_support::config::{invalid, EnvLayer};
use service_support::declare_settings;
use service_support::settings::{Declared, Millis, Range};

/// Prefix of the environment variables that configure the ingestor, e.g. `INGESTOR_INPUT_DIR`.
pub const ENV_PREFIX: &str = "INGESTOR_";

/// Largest accepted `max_future_skew_seconds`: a year. Anything larger disables the rule in
/// practice and would overflow time arithmetic.
const MAX_FUTURE_SKEW_SECONDS: u64 = 366 * 24 * 3600;

/// Largest accepted `dedup_memory_ids`: about 50 MiB per memory, beyond which the memory would
/// cost more than the lookups it saves.
const MAX_DEDUP_MEMORY_IDS: usize = 1 << 20;

/// Largest timeout PostgreSQL accepts, in ms (its GUCs are `int`, so `INT_MAX`). Larger values
/// of the timeouts sent to it (`lock_timeout`, `statement_timeout`,
/// `idle_in_transaction_session_timeout`) are refused by the server with SQLSTATE 22023 on every
/// connection or transaction, which start-up catches instead.
const PG_MAX_TIMEOUT_MS: u64 = i32::MAX as u64;

/// The range of the timeouts sent to PostgreSQL.
const PG_TIMEOUT: Range<u64> = Range::at_most(
    PG_MAX_TIMEOUT_MS,
    "PostgreSQL's largest timeout, about 24.8 days; 0 = no timeout",
);

/// Largest accepted `ledger_retention_days`: about 2,700 years. Pruning computes
/// `now() - <days>`, and PostgreSQL's timestamps end in 4713 BC (about 2.4 million days back):
/// past that every prune fails.
const MAX_LEDGER_RETENTION_DAYS: u32 = 1_000_000;

pub use service_support::LogFormat;

/// What happens to a file once its transaction committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AfterLoad {
    /// Move it to the archive directory.
    #[default]
    Archive,
    /// Delete it.
    Delete,
}

/// What to do with header columns the contract does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExtraColumns {
    /// Ignore them.
    #[default]
    Ignore,
    /// Fail the file.
    Fail,
}

/// Where events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// CSV files landing in `input_dir`.
    #[default]
    Directory,
    /// Messages of Kafka topics (`kafka_*` keys).
    Kafka,
}

/// How a Kafka message holds its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// The contract's CSV line (no header), one event per message.
    #[default]
    Csv,
    /// A JSON object with the contract's six fields.
    Json,
}

impl MessageFormat {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "csv" => Some(MessageFormat::Csv),
            "json" => Some(MessageFormat::Json),
            _ => None,
        }
    }
}

/// Where a partition without a stored offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KafkaStart {
    /// Its oldest message still kept.
    #[default]
    Earliest,
    /// Messages produced from now on.
    Latest,
}

declare_settings! {
    /// Raw settings as layered by figment, each declared once: see
    /// [`service_support::settings`] for what the declaration gives and "Adding a setting" in
    /// `docs/configuration.md`. Durations are in milliseconds (`_ms` keys, read as [`Millis`]).
    pub struct RawSettings {
        /// Directory watched for event files.
        input_dir: PathBuf = PathBuf::from("data/incoming");
        /// Where loaded files are moved (default: `<input_dir>/processed`).
        archive_dir: Option<PathBuf> = None;
        /// Where files that cannot be loaded are moved (default: `<input_dir>/failed`).
        failed_dir: Option<PathBuf> = None;
        /// `archive` or `delete` loaded files.
        after_load: AfterLoad = AfterLoad::Archive;
        /// PostgreSQL connection string (URL or key=value).
        database_url: String = "postgres://ingestor@127.0.0.1:5432/events".into();
        /// File holding the database password (e.g. a Compose secret); overrides one in the URL.
        database_password_file: Option<PathBuf> = None;
        /// libpq's `sslmode` (disable, prefer, require, verify-ca, verify-full); overrides one in
        /// the URL; default `prefer`.
        database_sslmode: Option<String> = None;
        /// PEM file of the CA certificates the server's certificate must chain to (libpq's
        /// `sslrootcert`); overrides one in the URL.
        database_sslrootcert: Option<PathBuf> = None;
        /// HTTP listen address for /metrics, /healthz, /readyz.
        listen: String = "127.0.0.1:9100".into();
        /// Name of this instance in the ledger's `claimed_by` (default: host name and pid).
        instance_id: Option<String> = None;
        /// Full rescan of the input directory every this many ms (inotify covers the rest).
        rescan_interval_ms: Millis = Millis::ms(1_000), range = Range::at_least(1);
        /// A file not announced by inotify (rename into / close after write) is only taken when its
        /// modification time is at least this old, so a file still being written is not read.
        settle_ms: Millis = Millis::ms(2_000);
        /// Longest accepted record in bytes; longer ones are rejected as `line_too_long`.
        max_line_bytes: usize = event_contract::DEFAULT_MAX_RECORD_BYTES,
            range = Range::at_least(1);
        /// `ignore` or `fail` header columns the contract does not know.
        extra_columns: ExtraColumns = ExtraColumns::Ignore;
        /// Fail a whole file whose rejected share exceeds this ratio (0 to 1); unset = never.
        max_reject_ratio: Option<f64> = None, range = Range::between(0.0, 1.0);
        /// How far in the future an event timestamp may be, in seconds.
        max_future_skew_seconds: u64 = 300,
            range = Range::at_most(MAX_FUTURE_SKEW_SECONDS, "one year");
        /// Loader loops working side by side on disjoint files, each with its own connection.
        loaders: usize = 2, range = Range::at_least(1);
        /// How long a COPY may wait for another in-flight transaction inserting the same event id
        /// before the file is deferred (ms; 0 = wait until that transaction ends).
        conflict_wait_ms: Millis = Millis::ms(50), range = PG_TIMEOUT;
        /// Rows per COPY chunk: the unit of streaming and of the memory bound.
        chunk_rows: usize = 8_192, range = Range::at_least(1);
        /// Event ids remembered as recently stored (per loader's transaction, and per process's
        /// commits), so most duplicates are dropped without a database lookup; 0 disables it.
        dedup_memory_ids: usize = 16_384,
            range = Range::at_most(MAX_DEDUP_MEMORY_IDS, "each id costs about 50 bytes in each of loaders + 1 memories");
        /// At most this many files in one transaction when a backlog builds.
        batch_max_files: usize = 32, range = Range::at_least(1);
        /// A batch closes once it holds this many rows.
        batch_max_rows: u64 = 50_000, range = Range::at_least(1);
        /// A batch takes files while their sizes add up to at most this many bytes; a bigger file
        /// is loaded in a batch of its own (every file of a batch is hashed before BEGIN).
        batch_max_bytes: u64 = 256 * 1024 * 1024;
        /// Database connections in the pool.
        pool_size: u32 = 4, range = Range::at_least(1);
        /// Timeout to connect to PostgreSQL (and to wait for a pooled connection), ms.
        connect_timeout_ms: Millis = Millis::ms(5_000), range = Range::at_least(1);
        /// Server-side `statement_timeout` of the ingestor's sessions, ms.
        statement_timeout_ms: Millis = Millis::ms(60_000), range = PG_TIMEOUT;
        /// Server-side `idle_in_transaction_session_timeout` of the ingestor's sessions, ms.
        idle_in_transaction_timeout_ms: Millis = Millis::ms(60_000), range = PG_TIMEOUT;
        /// First retry delay after a database error, ms (doubles up to `retry_max_ms`, with jitter).
        retry_initial_ms: Millis = Millis::ms(100), range = Range::at_least(1);
        /// Longest retry delay, ms.
        retry_max_ms: Millis = Millis::ms(5_000);
        /// On SIGTERM/SIGINT, how long work in flight may take to commit, ms.
        drain_timeout_ms: Millis = Millis::ms(10_000);
        /// Ledger entries older than this many days are pruned (0 = keep forever).
        ledger_retention_days: u32 = 30,
            range = Range::at_most(MAX_LEDGER_RETENTION_DAYS, "PostgreSQL's timestamps go back no further; 0 = keep forever");
        /// `text` or `json`.
        log_format: LogFormat = LogFormat::Text;
        /// Where events come from: `directory` (CSV files in `input_dir`) or `kafka` (the
        /// topics of the `kafka_*` keys).
        source: SourceKind = SourceKind::Directory;
        /// Kafka bootstrap servers, `host:port[,host:port...]` (`source = kafka`).
        kafka_brokers: String = "localhost:9092".into();
        /// Topics to load, comma-separated; each `name`, `name:csv` or `name:json` (its message
        /// format; `kafka_format` when not given).
        kafka_topics: String = "events".into();
        /// Message format of topics that name none: `csv` (the contract's CSV line, no header)
        /// or `json` (an object with the contract's six fields).
        kafka_format: MessageFormat = MessageFormat::Csv;
        /// Consumer group: ingestors with the same group share the topics' partitions.
        kafka_group_id: String = "event-ingest".into();
        /// Where a partition with no stored offset (table `source_offsets`) starts: `earliest`
        /// or `latest`.
        kafka_start: KafkaStart = KafkaStart::Earliest;
        /// At most this many of a partition's messages in one batch (one ledger entry).
        kafka_batch_max_messages: usize = 10_000, range = Range::at_least(1);
        /// Buffered messages wait at most this long for more before they are loaded, ms (0 =
        /// load what has arrived; batches still grow while the loaders are busy).
        kafka_batch_wait_ms: Millis = Millis::ms(0);
        /// A partition holding this many messages not yet loaded is paused until half of them
        /// are (backpressure: memory stays bounded when PostgreSQL is slow or down).
        kafka_buffer_max_messages: usize = 100_000, range = Range::at_least(2);
        /// Extra librdkafka properties, `key=value` separated by `;` or line breaks (SASL, TLS,
        /// timeouts), e.g. `security.protocol=SASL_SSL;sasl.mechanism=SCRAM-SHA-512`.
        kafka_client_options: Option<String> = None;
        /// File holding the SASL password (`sasl.password`), e.g. a Compose secret.
        kafka_sasl_password_file: Option<PathBuf> = None;
    }
}

/// librdkafka properties the Kafka source sets itself: the exactly-once design depends on
/// them (offsets stored in PostgreSQL, cooperative rebalancing, no end-of-partition events).
pub const KAFKA_RESERVED_OPTIONS: [&str; 7] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "enable.partition.eof",
    "partition.assignment.strategy",
    "auto.offset.reset",
];

/// One topic the Kafka source loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTopic {
    /// Its name.
    pub name: String,
    /// How its messages hold events.
    pub format: MessageFormat,
}

/// The Kafka source's validated settings.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topics and their formats.
    pub topics: Vec<KafkaTopic>,
    /// Consumer group.
    pub group_id: String,
    /// Start of a partition never loaded.
    pub start: KafkaStart,
    /// Messages per batch.
    pub batch_max_messages: usize,
    /// Longest wait for a fuller batch.
    pub batch_wait: Duration,
    /// Buffered messages per partition before it is paused.
    pub buffer_max_messages: usize,
    /// Extra librdkafka properties.
    pub client_options: Vec<(String, String)>,
    /// SASL password read from its file.
    pub sasl_password: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory watched for event files.
    pub input_dir: PathBuf,
    /// Where loaded files go (`after_load = archive`).
    pub archive_dir: PathBuf,
    /// Where files that cannot be loaded go.
    pub failed_dir: PathBuf,
    /// Archive or delete loaded files.
    pub after_load: AfterLoad,
    /// Parsed connection settings.
    pub database: tokio_postgres::Config,
    /// The connection string with any password masked, for logs.
    pub database_display: String,
    /// TLS to PostgreSQL: every connection uses its connector.
    pub tls: Tls,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// This instance's name in the ledger.
    pub instance_id: String,
    /// Periodic rescan interval.
    pub rescan_interval: Duration,
    /// Minimum age of an unannounced file.
    pub settle: Duration,
    /// Record size cap.
    pub max_line_bytes: usize,
    /// Extra header columns policy.
    pub extra_columns: ExtraColumnPolicy,
    /// Error budget per file.
    pub max_reject_ratio: Option<f64>,
    /// Tolerated clock skew of event timestamps.
    pub max_future_skew: chrono::Duration,
    /// Loader loops.
    pub loaders: usize,
    /// Longest wait on another transaction's uncommitted event id.
    pub conflict_wait: Duration,
    /// Rows per COPY chunk.
    pub chunk_rows: usize,
    /// Capacity of each recently-stored-ids memory.
    pub dedup_memory_ids: usize,
    /// Files per transaction under backlog.
    pub batch_max_files: usize,
    /// Rows per transaction under backlog.
    pub batch_max_rows: u64,
    /// Bytes of files hashed for one transaction, before it begins.
    pub batch_max_bytes: u64,
    /// Pool size.
    pub pool_size: u32,
    /// Connect / pool checkout timeout.
    pub connect_timeout: Duration,
    /// Server-side statement timeout.
    pub statement_timeout: Duration,
    /// Server-side idle-in-transaction timeout.
    pub idle_in_transaction_timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Drain timeout at shutdown.
    pub drain_timeout: Duration,
    /// Ledger retention (`None` = forever).
    pub ledger_retention_days: Option<u32>,
    /// Log format.
    pub log_format: LogFormat,
    /// The Kafka source's settings when `source = kafka`; `None` for the directory source.
    pub kafka: Option<KafkaSettings>,
}

pub use service_support::ConfigError;

/// Layers defaults, the TOML file, the environment and the flags, then validates. `flags` are the command line's settings (a serializable struct whose unset fields are
/// skipped); `config_file` the TOML file named by `--config`.
///
/// # Errors
/// A [`ConfigError`] naming the key and the value that is wrong.
pub fn load(config_file: Option<&Path>, flags: &impl Serialize) -> Result<Settings, ConfigError> {
    service_support::config::layered::<RawSettings>(config_file, ENV, flags)?.validate()
}

/// The ingestor's environment: `INGESTOR_<KEY>`, and `DATABASE_URL` (the variable every
/// PostgreSQL tool knows) for `database_url`. `INGESTOR_CONFIG` and `INGESTOR_BACKTRACE` are
/// read before the settings are, so they are not keys.
const ENV: EnvLayer<'static> = EnvLayer {
    prefix: ENV_PREFIX,
    not_settings: &["config", "backtrace"],
    aliases: &[("DATABASE_URL", "database_url")],
};

/// Masks the password in a connection string (URL or key=value form) for logs and errors.
pub fn mask_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:****@{host}");
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=****"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl RawSettings {
    /// The TLS settings: `database_sslmode` and `database_sslrootcert` where set, else the
    /// URL's `sslmode` and `sslrootcert`, else libpq's default (`prefer`, no root certificate).
    fn tls_settings(&self, from_url: &TlsParameters) -> Result<Tls, ConfigError> {
        let (key, mode) = match (&self.database_sslmode, &from_url.sslmode) {
            (Some(mode), _) => ("database_sslmode", mode.as_str()),
            (None, Some(mode)) => ("database_url", mode.as_str()),
            (None, None) => ("database_sslmode", "prefer"),
        };
        // A mode from the URL is reported as the URL's (password masked), where it was set.
        let mode_value = |mode: &str| {
            if key == "database_url" {
                mask_password(&self.database_url)
            } else {
                mode.to_owned()
            }
        };
        let mode = SslMode::parse(mode).ok_or_else(|| {
            invalid(
                key,
                mode_value(mode),
                format!("sslmode must be {}", SslMode::VALUES),
            )
        })?;
        let root_cert = self
            .database_sslrootcert
            .clone()
            .or_else(|| from_url.sslrootcert.as_ref().map(PathBuf::from));
        let shown = root_cert.as_ref().map(|p| p.display().to_string());
        Tls::new(mode, root_cert).map_err(|e| match e.key {
            "database_sslrootcert" => invalid(e.key, shown.unwrap_or_default(), e.reason),
            _ => invalid(key, mode_value(mode.as_str()), e.reason),
        })
    }

    /// The Kafka source's settings, checked, when it is the source.
    fn kafka_settings(&self) -> Result<Option<KafkaSettings>, ConfigError> {
        if self.source != SourceKind::Kafka {
            return Ok(None);
        }
        if self.kafka_brokers.trim().is_empty() {
            return Err(invalid(
                "kafka_brokers",
                "",
                "must name at least one host:port",
            ));
        }
        let topics = parse_topics(&self.kafka_topics, self.kafka_format)
            .map_err(|why| invalid("kafka_topics", &self.kafka_topics, why))?;
        let options = self.kafka_client_options.as_deref().unwrap_or_default();
        let client_options = parse_client_options(options)
            .and_then(|parsed| librdkafka_accepts(&parsed).map(|()| parsed))
            .map_err(|why| invalid("kafka_client_options", masked_options(options), why))?;
        let sasl_password = match &self.kafka_sasl_password_file {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        invalid(
                            "kafka_sasl_password_file",
                            path.display(),
                            format!("cannot be read ({e})"),
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
        };
        if self.kafka_group_id.trim().is_empty() {
            return Err(invalid("kafka_group_id", "", "must not be empty"));
        }
        Ok(Some(KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            topics,
            group_id: self.kafka_group_id.clone(),
            start: self.kafka_start,
            batch_max_messages: self.kafka_batch_max_messages,
            batch_wait: self.kafka_batch_wait_ms.get(),
            buffer_max_messages: self.kafka_buffer_max_messages,
            client_options,
            sasl_password,
        }))
    }

    /// Checks every value: each key's declared range ([`Declared::check_ranges`]), and here
    /// what a declaration cannot say (a value to parse, a rule over two keys).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first unusable key.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let tls_parameters = take_tls_parameters(&self.database_url);
        let tls = self.tls_settings(&tls_parameters)?;
        let mut database: tokio_postgres::Config = tls_parameters.rest.parse().map_err(|e| {
            invalid(
                "database_url",
                mask_password(&self.database_url),
                format!("not a PostgreSQL connection string ({e})"),
            )
        })?;
        if let Some(path) = &self.database_password_file {
            let password = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "database_password_file",
                    path.display(),
                    format!("cannot be read ({e})"),
                )
            })?;
            database.password(password.trim_end_matches(['\r', '\n']));
        }
        database.ssl_mode(tls.negotiation());
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                &self.listen,
                "must be an address like 0.0.0.0:9100",
            )
        })?;
        self.check_ranges()?;
        let kafka = self.kafka_settings()?;
        if (self.pool_size as usize) <= self.loaders {
            return Err(invalid(
                "pool_size",
                self.pool_size,
                format!("must exceed loaders ({}): each loader holds a connection and readiness checks need one more", self.loaders),
            ));
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(invalid(
                "retry_max_ms",
                self.retry_max_ms,
                "must not be below retry_initial_ms",
            ));
        }
        if self.input_dir.as_os_str().is_empty() {
            return Err(invalid("input_dir", "", "must name a directory"));
        }
        let archive_dir = self
            .archive_dir
            .unwrap_or_else(|| self.input_dir.join("processed"));
        let failed_dir = self
            .failed_dir
            .unwrap_or_else(|| self.input_dir.join("failed"));
        // Compared as resolved paths: `in/../in`, `./in` or a symbolic link to `in` name the
        // input directory as surely as `in` does, and a file "moved" there stays in place.
        let input = resolved(&self.input_dir);
        for (key, dir) in [("archive_dir", &archive_dir), ("failed_dir", &failed_dir)] {
            if resolved(dir) == input {
                return Err(invalid(
                    key,
                    dir.display(),
                    format!("must differ from input_dir ({}), but both resolve to {}; finished files moved there would be loaded again and again", self.input_dir.display(), input.display()),
                ));
            }
        }
        Ok(Settings {
            kafka,
            database_display: mask_password(&self.database_url),
            database,
            tls,
            listen,
            instance_id: self.instance_id.unwrap_or_else(default_instance_id),
            rescan_interval: self.rescan_interval_ms.get(),
            settle: self.settle_ms.get(),
            max_line_bytes: self.max_line_bytes,
            extra_columns: match self.extra_columns {
                ExtraColumns::Ignore => ExtraColumnPolicy::Ignore,
                ExtraColumns::Fail => ExtraColumnPolicy::Fail,
            },
            max_reject_ratio: self.max_reject_ratio,
            max_future_skew: chrono::Duration::seconds(
                i64::try_from(self.max_future_skew_seconds).unwrap_or(i64::MAX / 1_000),
            ),
            loaders: self.loaders,
            conflict_wait: self.conflict_wait_ms.get(),
            chunk_rows: self.chunk_rows,
            dedup_memory_ids: self.dedup_memory_ids,
            batch_max_files: self.batch_max_files,
            batch_max_rows: self.batch_max_rows,
            batch_max_bytes: self.batch_max_bytes,
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout_ms.get(),
            statement_timeout: self.statement_timeout_ms.get(),
            idle_in_transaction_timeout: self.idle_in_transaction_timeout_ms.get(),
            retry_initial: self.retry_initial_ms.get(),
            retry_max: self.retry_max_ms.get(),
            drain_timeout: self.drain_timeout_ms.get(),
            ledger_retention_days: (self.ledger_retention_days > 0)
                .then_some(self.ledger_retention_days),
            log_format: self.log_format,
            input_dir: self.input_dir,
            archive_dir,
            failed_dir,
            after_load: self.after_load,
        })
    }
}

/// `name[:format],...` into topics; an error says what is wrong.
fn parse_topics(list: &str, default: MessageFormat) -> Result<Vec<KafkaTopic>, String> {
    let mut topics: Vec<KafkaTopic> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (name, format) = match item.split_once(':') {
            None => (item, default),
            Some((name, format)) => (
                name,
                MessageFormat::parse(format)
                    .ok_or_else(|| format!("`{item}`: the format must be csv or json"))?,
            ),
        };
        // Kafka's own rule for topic names.
        let legal = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if name.is_empty() || name.len() > 249 || !legal || name == "." || name == ".." {
            return Err(format!(
                "`{name}` is not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')"
            ));
        }
        if topics.iter().any(|t| t.name == name) {
            return Err(format!("`{name}` is listed twice"));
        }
        topics.push(KafkaTopic {
            name: name.to_owned(),
            format,
        });
    }
    if topics.is_empty() {
        return Err("must name at least one topic".to_owned());
    }
    Ok(topics)
}

/// `key=value` pairs separated by `;` or line breaks; the keys the source sets itself are
/// refused.
fn parse_client_options(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut options = Vec::new();
    for item in text
        .split([';', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("`{item}` is not key=value"));
        };
        let key = key.trim();
        if KAFKA_RESERVED_OPTIONS.contains(&key) {
            return Err(format!(
                "`{key}` is set by the ingestor itself (its exactly-once design depends on it); \
                 use the kafka_* keys instead"
            ));
        }
        options.push((key.to_owned(), value.trim().to_owned()));
    }
    Ok(options)
}

/// Whether librdkafka knows every property and accepts its value (checked without creating a
/// client, so a typo stops start-up here rather than when the consumer starts).
fn librdkafka_accepts(options: &[(String, String)]) -> Result<(), String> {
    let mut config = rdkafka::ClientConfig::new();
    for (key, value) in options {
        config.set(key, value);
    }
    config
        .create_native_config()
        .map(drop)
        .map_err(|e| format!("librdkafka refuses it: {e}"))
}

/// The options with the values of secret properties (`*password*`, `*secret*`) masked, for
/// errors.
fn masked_options(options: &str) -> String {
    options
        .split([';', '\n'])
        .map(|item| match item.split_once('=') {
            Some((key, _)) if key.contains("password") || key.contains("secret") => {
                format!("{key}=***")
            }
            _ => item.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The directory `path` names, for comparing two paths: absolute, with `.`, `..` and symbolic
/// links resolved (by `canonicalize`) as far as the path exists; the part that does not exist
/// yet, which cannot hold links, is resolved by its components.
pub fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let components: Vec<Component> = absolute.components().collect();
    for existing in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..existing].iter().collect();
        if let Ok(mut out) = prefix.canonicalize() {
            for component in &components[existing..] {
                match component {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(part) => out.push(part),
                    Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                }
            }
            return out;
        }
    }
    absolute
}

/// `host:pid`: unique per process, and tells an operator where a claim came from.
fn default_instance_id() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use figment::Jail;
    use service_support::declaration_tests;

    fn load_args(flags: &[&str]) -> Result<Settings, ConfigError> {
        let cli =
            crate::cli::Cli::parse_from(std::iter::once("ingestor").chain(flags.iter().copied()));
        load(cli.global.config.as_deref(), &cli.global)
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "i.toml",
                "input_dir = \"/from/file\"\nchunk_rows = 10\npool_size = 9",
            )?;
            jail.set_env("INGESTOR_CHUNK_ROWS", "20");
            jail.set_env("INGESTOR_INPUT_DIR", "/from/env");
            jail.set_env("DATABASE_URL", "postgres://u:secret@db:5432/x");
            let s = load_args(&["--config", "i.toml", "--input-dir", "/from/flag"]).unwrap();
            assert_eq!(s.pool_size, 9, "file beats default");
            assert_eq!(s.chunk_rows, 20, "environment beats file");
            assert_eq!(
                s.input_dir,
                PathBuf::from("/from/flag"),
                "flag beats environment"
            );
            assert_eq!(s.archive_dir, PathBuf::from("/from/flag/processed"));
            assert_eq!(s.database_display, "postgres://u:****@db:5432/x");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        Jail::expect_with(|jail| {
            jail.set_env("INGESTOR_LISTEN", "nowhere");
            let err = load_args(&[]).unwrap_err().to_string();
            assert!(err.contains("`listen` = `nowhere`"), "{err}");
            jail.set_env("INGESTOR_LISTEN", "127.0.0.1:0");
            jail.set_env("INGESTOR_CHUNK_ROWS", "many");
            let err = load_args(&[]).unwrap_err().to_string();
            assert!(
                err.to_lowercase().contains("chunk_rows") && err.contains("many"),
                "{err}"
            );
            jail.set_env("INGESTOR_CHUNK_ROWS", "10");
            jail.set_env("INGESTOR_ARCHIVE_DIR", "data/incoming");
            let err = load_args(&[]).unwrap_err().to_string();
            assert!(err.contains("`archive_dir` = `data/incoming`"), "{err}");
            jail.set_env("INGESTOR_ARCHIVE_DIR", "data/done");
            jail.set_env("INGESTOR_MAX_REJECT_RATIO", "2");
            let err = load_args(&[]).unwrap_err().to_string();
            assert!(err.contains("`max_reject_ratio` = `2`"), "{err}");
            jail.set_env("INGESTOR_MAX_REJECT_RATIO", "0.5");
            Ok(())
        });
    }

    #[test]
    fn settings_sent_to_postgresql_must_fit_its_ranges() {
        Jail::expect_with(|jail| {
            for key in [
                "conflict_wait_ms",
                "statement_timeout_ms",
                "idle_in_transaction_timeout_ms",
            ] {
                let env = format!("INGESTOR_{}", key.to_uppercase());
                jail.set_env(&env, "2147483647");
                assert!(load_args(&[]).is_ok(), "{key} at INT_MAX is accepted");
                jail.set_env(&env, "99999999999");
                let err = load_args(&[]).unwrap_err().to_string();
                assert!(
                    err.contains(&format!("`{key}` = `99999999999`")) && err.contains("2147483647"),
                    "{err}"
                );
                jail.set_env(&env, "0");
            }
            jail.set_env("INGESTOR_LEDGER_RETENTION_DAYS", "4000000");
            let err = load_args(&[]).unwrap_err().to_string();
            assert!(err.contains("`ledger_retention_days` = `4000000`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_password_file_supplies_the_password_and_a_missing_one_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file("pw", "s3cret\n")?;
            jail.set_env("INGESTOR_DATABASE_PASSWORD_FILE", "pw");
            let settings = load_args(&[]).unwrap();
            assert_eq!(settings.database.get_password(), Some(&b"s3cret"[..]));
            jail.set_env("INGESTOR_DATABASE_PASSWORD_FILE", "missing");
            let err = load_args(&[]).unwrap_err().to_string();
            assert!(
                err.contains("`database_password_file` = `missing`"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_finished_files_directory_that_is_the_input_by_another_path_is_refused() {
        Jail::expect_with(|jail| {
            std::fs::create_dir(jail.directory().join("in")).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink("in", jail.directory().join("link"))
                .map_err(|e| e.to_string())?;
            jail.set_env("INGESTOR_INPUT_DIR", "in");
            for (key, value) in [
                ("ARCHIVE_DIR", "in/../in"),
                ("ARCHIVE_DIR", "./in/."),
                ("FAILED_DIR", "link"),
                ("FAILED_DIR", "in/missing/.."),
            ] {
                jail.set_env(format!("INGESTOR_{key}"), value);
                let err = load_args(&[]).unwrap_err().to_string();
                let key = key.to_lowercase();
                assert!(err.contains(&format!("`{key}` = `{value}`")), "{err}");
                assert!(err.contains("must differ from input_dir (in)"), "{err}");
                jail.set_env(format!("INGESTOR_{}", key.to_uppercase()), "elsewhere");
            }
            // A sibling whose name merely starts alike is another directory.
            jail.set_env("INGESTOR_ARCHIVE_DIR", "in/../in2");
            load_args(&[]).unwrap();
            Ok(())
        });
    }

    #[test]
    fn tls_settings_come_from_the_url_or_our_keys_and_a_bad_one_names_its_key() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://u:pw@h/x?sslmode=require");
            let settings = load_args(&[]).unwrap();
            assert_eq!(settings.tls.mode, SslMode::Require);
            assert_eq!(
                settings.database.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require
            );
            jail.set_env("INGESTOR_DATABASE_SSLMODE", "disable");
            let settings = load_args(&[]).unwrap();
            assert_eq!(settings.tls.mode, SslMode::Disable, "our key beats the URL");
            jail.set_env("INGESTOR_DATABASE_SSLMODE", "verify-fulll");
            let err = load_args(&[]).unwrap_err().to_string();
            assert!(err.contains("`database_sslmode` = `verify-fulll`"), "{err}");
            jail.set_env("INGESTOR_DATABASE_SSLMODE", "verify-ca");
            let err = load_args(&[]).unwrap_err().to_string();
            assert!(err.contains("set database_sslrootcert"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://u:pw@h/x?sslmode=verify-full");
            let err = load_args(&[]).unwrap_err().to_string();
            assert!(
                err.contains("`database_url` = `postgres://u:****@h/x?sslmode=verify-full`"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn passwords_are_masked_in_both_connection_string_forms() {
        assert_eq!(mask_password("postgres://a:b@h/d"), "postgres://a:****@h/d");
        assert_eq!(
            mask_password("host=h password=x user=u"),
            "host=h password=**** user=u"
        );
        assert_eq!(mask_password("postgres://a@h/d"), "postgres://a@h/d");
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
