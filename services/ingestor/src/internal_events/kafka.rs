//! What the Kafka source reports (`source = "kafka"`): its metrics (`ingestor_kafka_*`) and
//! log lines, declared here like every other event of the ingestor. Messages by outcome are
//! the ingestor's row counters (`ingestor_rows_total{outcome}`): a message is a row.
//!
//! Labels: `topic` and `partition` come from the configured topics' partitions (a bounded set
//! the operator chose), outcomes and kinds from the fixed lists below.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use service_support::{counter_vec, histogram, register};

use super::{Metrics, LATENCY_BUCKETS};
use crate::model::{PartitionKey, PartitionView};

/// Outcome label values of `ingestor_kafka_batches_total`.
pub const KAFKA_BATCH_OUTCOMES: [&str; 4] = ["loaded", "failed", "retried", "out_of_step"];
/// Kind label values of `ingestor_kafka_rebalances_total`.
pub const KAFKA_REBALANCE_KINDS: [&str; 2] = ["assigned", "revoked"];

/// The Kafka source's metrics.
#[derive(Clone)]
pub(super) struct KafkaMetrics {
    received: IntCounter,
    batches: IntCounterVec,
    rebalances: IntCounterVec,
    consume_errors: IntCounter,
    broker_up: IntGauge,
    assigned: IntGauge,
    buffered: IntGauge,
    paused: IntGauge,
    lag: IntGaugeVec,
    produce_to_commit: Histogram,
}

impl KafkaMetrics {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| register(registry, IntGauge::new(name, help)?);
        Ok(KafkaMetrics {
            received: register(
                registry,
                IntCounter::new(
                    "ingestor_kafka_messages_received_total",
                    "Messages the Kafka consumer received (before validation; a message received again after a seek counts again).",
                )?,
            )?,
            batches: counter_vec(
                registry,
                "ingestor_kafka_batches_total",
                "Ranges of a partition's messages by outcome: loaded (committed with the stored offset), failed (recorded as failed, offset moved), retried (nothing committed), out_of_step (the stored offset was elsewhere; the partition is read again from there).",
                "outcome",
                &KAFKA_BATCH_OUTCOMES,
            )?,
            rebalances: counter_vec(
                registry,
                "ingestor_kafka_rebalances_total",
                "Consumer group rebalances seen by this consumer, by kind.",
                "kind",
                &KAFKA_REBALANCE_KINDS,
            )?,
            consume_errors: register(
                registry,
                IntCounter::new(
                    "ingestor_kafka_consume_errors_total",
                    "Errors the Kafka client reported while consuming, seeking, pausing or rebalancing.",
                )?,
            )?,
            broker_up: gauge(
                "ingestor_kafka_broker_up",
                "1 while the Kafka cluster is reachable, 0 after the client reported it unreachable.",
            )?,
            assigned: gauge(
                "ingestor_kafka_assigned_partitions",
                "Partitions assigned to this consumer.",
            )?,
            buffered: gauge(
                "ingestor_kafka_buffered_messages",
                "Messages received and not yet loaded, over all assigned partitions.",
            )?,
            paused: gauge(
                "ingestor_kafka_paused_partitions",
                "Assigned partitions paused because their buffer is full (backpressure).",
            )?,
            lag: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "ingestor_kafka_consumer_lag_messages",
                        "Messages the broker holds past the offset stored in PostgreSQL, per assigned partition.",
                    ),
                    &["topic", "partition"],
                )?,
            )?,
            produce_to_commit: histogram(
                registry,
                "ingestor_kafka_produce_to_commit_seconds",
                "Per message, from its Kafka timestamp (produce time) to the COMMIT that stored it.",
                LATENCY_BUCKETS,
            )?,
        })
    }
}

impl Metrics {
    /// The Kafka source started: its cluster counts as reachable until the client says not.
    pub fn kafka_source_started(&self) {
        self.kafka.broker_up.set(1);
    }

    /// Counts messages the consumer received.
    pub fn kafka_messages_received(&self, count: usize) {
        self.kafka.received.inc_by(count as u64);
    }
}

/// The cluster answered again after it was unreachable.
pub struct KafkaBrokerReachable;

impl KafkaBrokerReachable {
    /// Logs and sets the gauge.
    pub fn emit(&self, m: &Metrics) {
        tracing::info!("Kafka cluster reachable again");
        m.kafka.broker_up.set(1);
    }
}

/// The client reported an error of the cluster's or the connection's.
pub struct KafkaBrokerUnreachable<'a> {
    /// What the client reported.
    pub error: &'a KafkaError,
    /// Its explanation.
    pub reason: &'a str,
    /// Whether it means the cluster is out of reach (readiness is lost until it answers).
    pub unreachable: bool,
}

impl KafkaBrokerUnreachable<'_> {
    /// Logs and sets the gauge.
    pub fn emit(&self, m: &Metrics) {
        if self.unreachable {
            tracing::warn!(error = %self.error, reason = self.reason, "Kafka cluster unreachable; not ready until it answers");
            m.kafka.broker_up.set(0);
        } else {
            tracing::warn!(error = %self.error, reason = self.reason, "Kafka client error");
        }
    }
}

/// A line librdkafka logged.
pub struct KafkaClientLog<'a> {
    /// Its syslog level.
    pub level: RDKafkaLogLevel,
    /// Its facility.
    pub facility: &'a str,
    /// The line.
    pub message: &'a str,
}

impl KafkaClientLog<'_> {
    /// Logs at the matching level.
    pub fn emit(&self, _m: &Metrics) {
        let (facility, message) = (self.facility, self.message);
        match self.level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }
}

/// Consuming, seeking, pausing or rebalancing failed.
pub struct KafkaConsumeFailed<'a> {
    /// What the client reported.
    pub error: &'a KafkaError,
}

impl KafkaConsumeFailed<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(error = %self.error, "Kafka consumer error");
        m.kafka.consume_errors.inc();
    }
}

/// Partitions were assigned, each starting at its stored offset.
pub struct KafkaPartitionsAssigned<'a> {
    /// Each partition and its stored offset (`None`: none stored, it starts per `kafka_start`).
    pub positions: &'a [(PartitionKey, Option<i64>)],
}

impl KafkaPartitionsAssigned<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        let positions: Vec<String> = self
            .positions
            .iter()
            .map(|(key, stored)| match stored {
                Some(offset) => format!("{key}@{offset}"),
                None => format!("{key}@start"),
            })
            .collect();
        tracing::info!(partitions = ?positions, "Kafka partitions assigned; each starts at its offset stored in PostgreSQL");
        m.kafka.rebalances.with_label_values(&["assigned"]).inc();
    }
}

/// Partitions were revoked after the batch in flight ended.
pub struct KafkaPartitionsRevoked<'a> {
    /// Which.
    pub partitions: &'a [PartitionKey],
    /// How long the revocation waited for the batch in flight.
    pub waited: Duration,
}

impl KafkaPartitionsRevoked<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        let partitions: Vec<String> = self.partitions.iter().map(ToString::to_string).collect();
        tracing::info!(partitions = ?partitions, waited_ms = self.waited.as_millis() as u64, "Kafka partitions revoked");
        m.kafka.rebalances.with_label_values(&["revoked"]).inc();
    }
}

/// The stored offsets of newly assigned partitions could not be read; asked again.
pub struct KafkaPositionsUnavailable<'a> {
    /// Why.
    pub error: &'a anyhow::Error,
}

impl KafkaPositionsUnavailable<'_> {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        tracing::warn!(
            error = format!("{:#}", self.error),
            "Cannot read the assigned partitions' stored offsets; asking again in a second"
        );
    }
}

/// A seek to a partition's stored offset failed.
pub struct KafkaSeekFailed<'a> {
    /// Which partition.
    pub partition: &'a PartitionKey,
    /// To where.
    pub offset: i64,
    /// Why.
    pub error: &'a KafkaError,
}

impl KafkaSeekFailed<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(partition = %self.partition, offset = self.offset, error = %self.error, "Kafka seek failed");
        m.kafka.consume_errors.inc();
    }
}

/// An idle partition's stored offset was moved by someone else (an operator's replay).
pub struct KafkaStoredOffsetMoved<'a> {
    /// Which partition.
    pub partition: &'a PartitionKey,
    /// Where this consumer was.
    pub from: i64,
    /// Where the stored offset is; the partition is read from there.
    pub to: i64,
}

impl KafkaStoredOffsetMoved<'_> {
    /// Logs.
    pub fn emit(&self, _m: &Metrics) {
        tracing::info!(partition = %self.partition, from = self.from, to = self.to, "Stored offset moved outside this consumer; reading the partition from it");
    }
}

/// A range's claim found the partition's stored offset elsewhere.
pub struct KafkaRangeOutOfStep<'a> {
    /// The range.
    pub name: &'a str,
    /// The stored offset it will be read from again.
    pub stored: i64,
}

impl KafkaRangeOutOfStep<'_> {
    /// Logs and counts.
    pub fn emit(&self, m: &Metrics) {
        tracing::info!(
            range = self.name,
            stored_offset = self.stored,
            "Stored offset is elsewhere; the partition is read again from it"
        );
        m.kafka.batches.with_label_values(&["out_of_step"]).inc();
    }
}

/// A range's outcome after its batch.
pub struct KafkaRangeSettled<'a> {
    /// `loaded`, `failed` or `retried` (from [`KAFKA_BATCH_OUTCOMES`]).
    pub outcome: &'static str,
    /// The produce times (ms since the epoch) of its messages, when it committed.
    pub produced_ms: &'a [i64],
}

impl KafkaRangeSettled<'_> {
    /// Counts, and observes each committed message's produce-to-commit time.
    pub fn emit(&self, m: &Metrics) {
        m.kafka.batches.with_label_values(&[self.outcome]).inc();
        let now = chrono::Utc::now().timestamp_millis();
        for produced in self.produced_ms {
            m.kafka
                .produce_to_commit
                .observe((now - produced).max(0) as f64 / 1e3);
        }
    }
}

/// The partitions held, on the housekeeping clock.
pub struct KafkaBacklogObserved<'a> {
    /// Each partition.
    pub partitions: &'a [PartitionView],
}

impl KafkaBacklogObserved<'_> {
    /// Sets the gauges (a partition no longer held loses its lag series).
    pub fn emit(&self, m: &Metrics) {
        let k = &m.kafka;
        k.assigned.set(self.partitions.len() as i64);
        k.buffered
            .set(self.partitions.iter().map(|p| p.buffered as i64).sum());
        k.paused
            .set(self.partitions.iter().filter(|p| p.paused).count() as i64);
        k.lag.reset();
        for p in self.partitions {
            if let Some(lag) = p.lag {
                k.lag
                    .with_label_values(&[&*p.key.topic, &p.key.partition.to_string()])
                    .set(lag);
            }
        }
    }
}
