//! Every metric and log line the generator emits, declared in one place (as the ingestor's
//! `internal_events`): the Prometheus registry it owns, and one type per event, whose `emit`
//! logs it and moves its metrics.
//!
//! Counters move once per **published** batch, from that batch's [`RowCounts`], never per row:
//! the write loop is hot, and a reader can only ever see rows of published batches (a file
//! renamed into the directory, or a run of Kafka messages all acknowledged by the brokers), so
//! the counters count exactly what downstream can see (a file discarded at shutdown is never
//! counted). The Kafka sink's delivery latencies are gathered per batch too and observed into
//! the histogram when the batch is settled.
//!
//! Metric names follow `generator_<what>_<unit>`, counters end in `_total`, and label values come
//! from bounded sets (row kinds, reason codes), never from file names. The process collector's
//! `process_*` metrics (CPU, memory, descriptors, start time) are registered here too.

use std::net::SocketAddr;
use std::path::Path;

use event_contract::RejectReason;
use prometheus::{
    Encoder, Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use service_support::{counter_vec, histogram, register, register_process_metrics};

use crate::config::{KafkaFormat, Settings, SinkSettings};
use crate::rows::is_injected;
use crate::summary::{RowCounts, RunSummary};

/// `kind` label values of `generator_events_total`.
pub const EVENT_KINDS: [&str; 3] = [KIND_VALID, KIND_DUPLICATE, KIND_INVALID];
/// New valid events (late ones included).
const KIND_VALID: &str = "valid";
/// Exact repeats of an earlier event.
const KIND_DUPLICATE: &str = "duplicate";
/// Rows that break the contract.
const KIND_INVALID: &str = "invalid";

/// Buckets of `generator_kafka_delivery_latency_seconds`: from a broker on the same host (a
/// millisecond) to one that is failing over (tens of seconds).
const DELIVERY_LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The generator's metrics. Cloning is cheap: every metric is shared, so a clone handed to the
/// write loop's thread updates the same series the HTTP server renders.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    invalid_rows: IntCounterVec,
    late_events: IntCounter,
    files: IntCounter,
    bytes: IntCounter,
    target_rate: Gauge,
    kafka_produced: IntCounter,
    kafka_failed: IntCounter,
    kafka_delivery_latency: Histogram,
}

impl Metrics {
    /// Creates and registers every metric, all series at 0 and `generator_build_info` at 1.
    ///
    /// # Errors
    /// Only on a programming error (a duplicate or malformed metric name).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let build_info = IntGauge::with_opts(
            Opts::new("generator_build_info", "Build information; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build_info.set(1);
        register(&registry, build_info)?;
        register_process_metrics(&registry)?;
        let reasons: Vec<&str> = RejectReason::ALL
            .into_iter()
            .filter(|r| is_injected(*r))
            .map(RejectReason::code)
            .collect();
        Ok(Metrics {
            events: counter_vec(
                &registry,
                "generator_events_total",
                "Rows in published files, by kind (valid, duplicate, invalid).",
                "kind",
                &EVENT_KINDS,
            )?,
            invalid_rows: counter_vec(
                &registry,
                "generator_invalid_rows_total",
                "Invalid rows in published files, by injected reason code.",
                "reason",
                &reasons,
            )?,
            late_events: register(
                &registry,
                IntCounter::new(
                    "generator_late_events_total",
                    "Valid events in published files stamped late on purpose.",
                )?,
            )?,
            files: register(
                &registry,
                IntCounter::new("generator_files_total", "Files published.")?,
            )?,
            bytes: register(
                &registry,
                IntCounter::new(
                    "generator_bytes_total",
                    "Bytes published: files with their headers, or Kafka message payloads.",
                )?,
            )?,
            target_rate: register(
                &registry,
                Gauge::new(
                    "generator_target_rate_events_per_second",
                    "The configured target rate in rows per second.",
                )?,
            )?,
            kafka_produced: register(
                &registry,
                IntCounter::new(
                    "generator_kafka_messages_produced_total",
                    "Kafka messages acknowledged by the brokers (sink kafka).",
                )?,
            )?,
            kafka_failed: register(
                &registry,
                IntCounter::new(
                    "generator_kafka_messages_failed_total",
                    "Kafka messages the producer refused or could not deliver (sink kafka).",
                )?,
            )?,
            kafka_delivery_latency: histogram(
                &registry,
                "generator_kafka_delivery_latency_seconds",
                "Time from handing a Kafka message to the producer to its acknowledgment.",
                &DELIVERY_LATENCY_BUCKETS,
            )?,
            registry,
        })
    }

    /// Records the configured target rate.
    pub fn set_target_rate(&self, events_per_second: f64) {
        self.target_rate.set(events_per_second);
    }

    /// Counts one published file of `bytes` bytes holding `counts` rows.
    pub fn file_published(&self, counts: &RowCounts, bytes: u64) {
        self.files.inc();
        self.rows_published(counts, bytes);
    }

    /// Counts one batch of Kafka messages, all acknowledged: `counts` rows, `bytes` of payload,
    /// and each message's delivery latency in seconds.
    pub fn messages_delivered(&self, counts: &RowCounts, bytes: u64, latencies: &[f64]) {
        self.kafka_produced.inc_by(counts.rows);
        let local = self.kafka_delivery_latency.local();
        for seconds in latencies {
            local.observe(*seconds);
        }
        local.flush();
        self.rows_published(counts, bytes);
    }

    /// Counts Kafka messages that were not delivered.
    pub fn messages_failed(&self, failed: u64) {
        self.kafka_failed.inc_by(failed);
    }

    fn rows_published(&self, counts: &RowCounts, bytes: u64) {
        self.bytes.inc_by(bytes);
        for (kind, n) in [
            (KIND_VALID, counts.valid),
            (KIND_DUPLICATE, counts.duplicates),
            (KIND_INVALID, counts.invalid),
        ] {
            self.events.with_label_values(&[kind]).inc_by(n);
        }
        self.late_events.inc_by(counts.late);
        for (reason, n) in &counts.invalid_by_reason {
            self.invalid_rows.with_label_values(&[reason]).inc_by(*n);
        }
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding gathered families into a Vec cannot fail but for a malformed family, which
        // registration already rules out; an empty page is the harmless fallback.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            buffer.clear();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// The start-up line: everything needed to reproduce the run, and where metrics are served.
pub struct GeneratorStarting<'a> {
    /// The settings, seed and start time resolved.
    pub settings: &'a Settings,
    /// The bound HTTP address, when there is a server.
    pub listen: Option<SocketAddr>,
}

impl GeneratorStarting<'_> {
    /// Logs.
    pub fn emit(&self) {
        let settings = self.settings;
        let (sink, out, kafka_brokers, kafka_topic) = match &settings.sink {
            SinkSettings::Directory => (
                "directory",
                Some(settings.out.display().to_string()),
                None,
                None,
            ),
            SinkSettings::Kafka(kafka) => (
                "kafka",
                None,
                Some(kafka.brokers.as_str()),
                Some(kafka.topic.as_str()),
            ),
        };
        tracing::info!(
            seed = settings.seed,
            sink,
            out,
            kafka_brokers,
            kafka_topic,
            rate = settings.rate,
            rows = settings.rows,
            files = settings.files,
            start_time = settings.start_time.map(|t| t.to_rfc3339()),
            listen = self.listen.map(|a| a.to_string()),
            "Generator starting"
        );
    }
}

/// A file was published (renamed into the output directory): downstream can see it now.
pub struct FilePublished<'a> {
    /// Where.
    pub path: &'a Path,
    /// Its rows by kind.
    pub counts: &'a RowCounts,
    /// Its size.
    pub bytes: u64,
}

impl FilePublished<'_> {
    /// Logs (at debug: one line per file) and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(path = %self.path.display(), rows = self.counts.rows, bytes = self.bytes, "File published");
        m.file_published(self.counts, self.bytes);
    }
}

/// The Kafka producer is set up and the brokers know the topic.
pub struct KafkaProducerReady<'a> {
    /// The bootstrap servers.
    pub brokers: &'a str,
    /// The topic.
    pub topic: &'a str,
    /// How many partitions the topic has.
    pub partitions: usize,
    /// The message format.
    pub format: KafkaFormat,
}

impl KafkaProducerReady<'_> {
    /// Logs.
    pub fn emit(&self) {
        tracing::info!(
            brokers = self.brokers,
            topic = self.topic,
            partitions = self.partitions,
            format = ?self.format,
            "Kafka producer ready"
        );
    }
}

/// A batch of Kafka messages was acknowledged in full: a consumer can read every one.
pub struct MessagesDelivered<'a> {
    /// Its rows by kind.
    pub counts: &'a RowCounts,
    /// Payload bytes.
    pub bytes: u64,
    /// Each message's delivery latency in seconds.
    pub latencies: &'a [f64],
}

impl MessagesDelivered<'_> {
    /// Logs (at debug: one line per batch) and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            messages = self.counts.rows,
            bytes = self.bytes,
            "Kafka messages delivered"
        );
        m.messages_delivered(self.counts, self.bytes, self.latencies);
    }
}

/// Kafka messages were refused by the producer or not acknowledged in time: they are lost, and
/// the run fails.
pub struct MessagesFailed<'a> {
    /// Messages not delivered.
    pub failed: u64,
    /// Messages of the same batch that were delivered.
    pub delivered: u64,
    /// The first error.
    pub error: &'a str,
}

impl MessagesFailed<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::error!(
            failed = self.failed,
            delivered = self.delivered,
            error = self.error,
            "Kafka messages not delivered"
        );
        m.messages_failed(self.failed);
    }
}

/// A log line of librdkafka's, at its level (librdkafka logs connection trouble itself, and
/// keeps retrying).
pub struct KafkaClientLog<'a> {
    /// librdkafka's level.
    pub level: RDKafkaLogLevel,
    /// Its facility (e.g. `FAIL`, `BROKER`).
    pub facility: &'a str,
    /// The line.
    pub message: &'a str,
}

impl KafkaClientLog<'_> {
    /// Logs.
    pub fn emit(&self) {
        let (facility, message) = (self.facility, self.message);
        match self.level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }
}

/// A client-level error librdkafka reports (all brokers down, authentication failed, a fatal
/// idempotence error). Most are transient and retried; a fatal one fails the next send.
pub struct KafkaClientError<'a> {
    /// The error.
    pub error: &'a KafkaError,
    /// librdkafka's explanation.
    pub reason: &'a str,
}

impl KafkaClientError<'_> {
    /// Logs.
    pub fn emit(&self) {
        tracing::warn!(error = %self.error, reason = self.reason, "Kafka client error");
    }
}

/// The run stopped in the middle of a file: its rows are thrown away with the temp file.
pub struct FileDiscarded {
    /// Rows written into it.
    pub rows: u64,
}

impl FileDiscarded {
    /// Logs.
    pub fn emit(&self) {
        tracing::info!(rows = self.rows, "Discarding the file in progress");
    }
}

/// The run is over: what it produced, for the exit summary line.
pub struct GeneratorFinished<'a> {
    /// The run's summary.
    pub summary: &'a RunSummary,
}

impl GeneratorFinished<'_> {
    /// Logs.
    pub fn emit(&self) {
        let summary = self.summary;
        tracing::info!(
            seed = summary.seed,
            files = summary.files,
            rows = summary.published.rows,
            valid = summary.published.valid,
            late = summary.published.late,
            duplicates = summary.published.duplicates,
            invalid = summary.published.invalid,
            invalid_by_reason = %serde_json::to_string(&summary.published.invalid_by_reason).unwrap_or_default(),
            discarded_rows = summary.discarded_rows,
            elapsed_seconds = summary.elapsed_seconds,
            rows_per_second = summary.rows_per_second(),
            "Generator finished"
        );
    }
}

/// The run failed; the process exits 1.
pub struct GeneratorFailed<'a> {
    /// The error with its cause chain.
    pub error: &'a anyhow::Error,
}

impl GeneratorFailed<'_> {
    /// Logs.
    pub fn emit(&self) {
        tracing::error!(error.cause_chain = ?self.error, error.message = %self.error, "Generator failed");
    }
}

/// SIGINT or SIGTERM: the file being written is discarded, never published half-written; Kafka
/// messages already handed to the producer are delivered (they cannot be taken back).
pub struct ShutdownRequested;

impl ShutdownRequested {
    /// Logs.
    pub fn emit(&self) {
        tracing::info!("Shutdown requested; the file in progress is discarded, Kafka messages already produced are flushed");
    }
}

/// HTTP clients still connected when the drain timeout ended are cut off.
pub struct HttpDrainTimedOut;

impl HttpDrainTimedOut {
    /// Logs.
    pub fn emit(&self) {
        tracing::warn!("HTTP drain timeout reached; closing the connections still open");
    }
}

/// A temp file of an earlier run that died before publishing it is removed at start-up.
pub struct StaleTempFileRemoved<'a> {
    /// The temp file.
    pub path: &'a Path,
}

impl StaleTempFileRemoved<'_> {
    /// Logs.
    pub fn emit(&self) {
        tracing::warn!(path = %self.path.display(), "Removing a temp file left by an earlier run");
    }
}

/// A discarded file's temp file could not be removed (the next start removes it).
pub struct TempFileNotRemoved<'a> {
    /// The temp file.
    pub path: &'a Path,
    /// Why.
    pub error: &'a std::io::Error,
}

impl TempFileNotRemoved<'_> {
    /// Logs.
    pub fn emit(&self) {
        tracing::error!(path = %self.path.display(), error = %self.error, "Cannot remove temp file");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn every_series_exists_at_zero_before_the_first_file() {
        let text = Metrics::new().unwrap().render();
        for kind in EVENT_KINDS {
            assert_eq!(
                value(&text, &format!("generator_events_total{{kind=\"{kind}\"}}")),
                0.0
            );
        }
        assert_eq!(
            value(&text, "generator_invalid_rows_total{reason=\"bad_uuid\"}"),
            0.0
        );
        assert!(
            !text.contains("reason=\"line_too_long\""),
            "never injected, so not a series: {text}"
        );
        assert_eq!(value(&text, "generator_files_total"), 0.0);
        for series in [
            "generator_kafka_messages_produced_total",
            "generator_kafka_messages_failed_total",
            "generator_kafka_delivery_latency_seconds_count",
        ] {
            assert_eq!(value(&text, series), 0.0, "{series}");
        }
        assert!(
            value(&text, "process_start_time_seconds") > 0.0,
            "the process collector reports this process: {text}"
        );
        assert_eq!(
            value(
                &text,
                &format!(
                    "generator_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            1.0
        );
    }

    #[test]
    fn a_delivered_batch_moves_the_row_counters_and_the_kafka_series() {
        // Arrange
        let metrics = Metrics::new().unwrap();
        let counts = RowCounts {
            rows: 3,
            valid: 2,
            invalid: 1,
            ..RowCounts::default()
        };
        // Act
        metrics.messages_delivered(&counts, 300, &[0.002, 0.004, 0.2]);
        metrics.messages_failed(2);
        // Assert
        let text = metrics.render();
        assert_eq!(value(&text, "generator_kafka_messages_produced_total"), 3.0);
        assert_eq!(value(&text, "generator_kafka_messages_failed_total"), 2.0);
        assert_eq!(
            value(&text, "generator_kafka_delivery_latency_seconds_count"),
            3.0
        );
        assert_eq!(
            value(
                &text,
                "generator_kafka_delivery_latency_seconds_bucket{le=\"0.005\"}"
            ),
            2.0
        );
        assert_eq!(value(&text, "generator_events_total{kind=\"valid\"}"), 2.0);
        assert_eq!(value(&text, "generator_bytes_total"), 300.0);
        assert_eq!(value(&text, "generator_files_total"), 0.0, "no file");
    }

    #[test]
    fn a_published_file_moves_every_counter_by_its_counts() {
        // Arrange
        let metrics = Metrics::new().unwrap();
        metrics.set_target_rate(250.0);
        let mut counts = RowCounts {
            rows: 10,
            valid: 6,
            late: 2,
            duplicates: 1,
            invalid: 3,
            ..RowCounts::default()
        };
        counts.invalid_by_reason.insert("bad_uuid", 2);
        counts.invalid_by_reason.insert("bad_price", 1);
        // Act
        metrics.file_published(&counts, 1_234);
        metrics.file_published(&counts, 1_000);
        // Assert
        let text = metrics.render();
        assert_eq!(value(&text, "generator_files_total"), 2.0);
        assert_eq!(value(&text, "generator_bytes_total"), 2_234.0);
        assert_eq!(value(&text, "generator_events_total{kind=\"valid\"}"), 12.0);
        assert_eq!(
            value(&text, "generator_events_total{kind=\"duplicate\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "generator_events_total{kind=\"invalid\"}"),
            6.0
        );
        assert_eq!(value(&text, "generator_late_events_total"), 4.0);
        assert_eq!(
            value(&text, "generator_invalid_rows_total{reason=\"bad_uuid\"}"),
            4.0
        );
        assert_eq!(
            value(&text, "generator_target_rate_events_per_second"),
            250.0
        );
    }
}
