//! The Kafka sink: one message per row, keyed by the user id, from an idempotent producer with
//! `acks=all`. Idempotence makes the producer's own retries safe (no duplicate, no reordering
//! within a partition), and the key puts a user's events in one partition, so a consumer sees
//! each user's events in the order they were generated. The duplicates a consumer does see are
//! the ones the `duplicate_ratio` knob asks for.
//!
//! The producer is librdkafka's, driven from the write loop's own thread (`BaseProducer`): every
//! `write` hands a message over and serves the delivery reports that arrived, and a batch of
//! `rows` messages is complete once every one of them is acknowledged (`publish` flushes). Only
//! then do the row counters move, as a file's do once it is published: the counters count what
//! a consumer can read.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaFormat, KafkaSettings};
use crate::internal_events::{
    KafkaClientError, KafkaClientLog, KafkaProducerReady, MessagesDelivered, MessagesFailed,
    Metrics,
};
use crate::rows::Row;
use crate::summary::RowCounts;

use super::{message, Sink, Stopped};

/// How long start-up waits for the brokers to answer a metadata request for the topic: long
/// enough for a broker that is still starting, short enough that a wrong address is reported
/// while someone is still looking.
const STARTUP_METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one wait for the producer's queue to drain lasts before the loop looks at the
/// cancellation token again.
const FLUSH_STEP: Duration = Duration::from_millis(200);
/// After a shutdown request, how long messages already handed to the producer may take to be
/// acknowledged before they are given up (purged, and reported as failed). Below Compose's
/// default 10 s grace period, so the summary line is still written.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `write` waits for room when the producer's queue is full (brokers slower than the
/// configured rate, or unreachable) before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(100);

/// The Kafka sink.
pub struct KafkaSink {
    producer: BaseProducer<DeliveryContext>,
    topic: String,
    format: KafkaFormat,
    metrics: Metrics,
    /// Scratch buffers reused for every message, so encoding does not allocate per row.
    payload: Vec<u8>,
    key: String,
    /// Messages and payload bytes handed to the producer in the current batch.
    written: u64,
    bytes: u64,
}

impl KafkaSink {
    /// Creates the producer and checks that the brokers answer and know the topic.
    ///
    /// # Errors
    /// When librdkafka refuses the configuration, or the brokers do not answer a metadata
    /// request for the topic within 30 s, or the topic does not exist (and the brokers do not
    /// create topics on demand).
    pub fn connect(settings: &KafkaSettings, metrics: Metrics) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("client.id", "generator")
            .set_log_level(RDKafkaLogLevel::Info);
        // The operator's options first, then the properties this sink's guarantees rest on
        // (config validation has already refused options that try to set them).
        for (key, value) in &settings.client_options {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all");
        let context = DeliveryContext {
            epoch: Instant::now(),
            tally: Mutex::new(Tally::default()),
        };
        let producer: BaseProducer<DeliveryContext> = config
            .create_with_context(context)
            .context("cannot create the Kafka producer (check kafka_client_options)")?;
        let metadata = producer
            .client()
            .fetch_metadata(Some(&settings.topic), STARTUP_METADATA_TIMEOUT)
            .with_context(|| {
                format!(
                    "Kafka brokers {} (key kafka_brokers) did not answer within {}s",
                    settings.brokers,
                    STARTUP_METADATA_TIMEOUT.as_secs()
                )
            })?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == settings.topic)
            .with_context(|| {
                format!("the brokers sent no metadata for topic {}", settings.topic)
            })?;
        // A topic that does not exist, is not ours or has a bad name will not get better; any
        // other error (a partition leader being elected just after the topic was created) is
        // librdkafka's to wait out, as it does for every send.
        if let Some(error) = topic.error().map(RDKafkaErrorCode::from) {
            if matches!(
                error,
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::InvalidTopic
            ) {
                anyhow::bail!(
                    "Kafka topic {} (key kafka_topic) cannot be produced to: {error}",
                    settings.topic
                );
            }
        }
        KafkaProducerReady {
            brokers: &settings.brokers,
            topic: &settings.topic,
            partitions: topic.partitions().len(),
            format: settings.format,
        }
        .emit();
        Ok(KafkaSink {
            producer,
            topic: settings.topic.clone(),
            format: settings.format,
            metrics,
            payload: Vec::with_capacity(256),
            key: String::with_capacity(20),
            written: 0,
            bytes: 0,
        })
    }

    /// Waits until every message handed over is acknowledged or has failed. Unbounded while the
    /// run goes on (librdkafka fails a message after its `message.timeout.ms`, 5 minutes by
    /// default); once `cancel` fires, at most [`SHUTDOWN_FLUSH_TIMEOUT`] more, after which the
    /// messages still waiting are purged (and so reported as failed).
    fn flush(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let mut give_up_at = None;
        loop {
            match self.producer.flush(FLUSH_STEP) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {}
                Err(e) => return Err(e).context("cannot flush the Kafka producer"),
            }
            if cancel.is_cancelled() {
                let deadline =
                    *give_up_at.get_or_insert_with(|| Instant::now() + SHUTDOWN_FLUSH_TIMEOUT);
                if Instant::now() >= deadline {
                    self.producer
                        .purge(PurgeConfig::default().queue().inflight());
                    // Purged messages get their (failed) delivery reports on the next poll.
                    let _ = self.producer.flush(FLUSH_STEP);
                    return Ok(());
                }
            }
        }
    }

    /// Ends the batch after a flush: counts it if every message was acknowledged, reports the
    /// failures and fails the run otherwise.
    fn settle(&mut self, counts: &RowCounts) -> anyhow::Result<()> {
        let tally = std::mem::take(&mut *self.producer.context().tally());
        let (written, bytes) = (
            std::mem::take(&mut self.written),
            std::mem::take(&mut self.bytes),
        );
        let unreported = written.saturating_sub(tally.delivered + tally.failed);
        if tally.failed > 0 || unreported > 0 {
            let error = tally
                .first_error
                .unwrap_or_else(|| "no delivery report".to_owned());
            MessagesFailed {
                failed: tally.failed + unreported,
                delivered: tally.delivered,
                error: &error,
            }
            .emit(&self.metrics);
            anyhow::bail!(
                "{} of {written} messages to Kafka topic {} were not delivered: {error}",
                tally.failed + unreported,
                self.topic
            );
        }
        MessagesDelivered {
            counts,
            bytes,
            latencies: &tally.latencies,
        }
        .emit(&self.metrics);
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn begin(&mut self) -> anyhow::Result<()> {
        self.written = 0;
        self.bytes = 0;
        Ok(())
    }

    fn write(&mut self, row: &Row) -> anyhow::Result<()> {
        message::encode(row, self.format, &mut self.payload)?;
        message::key(row, &mut self.key);
        // The send time rides along as the message's opaque value (microseconds since the
        // producer was created), so measuring the delivery latency costs no allocation.
        let sent_at = self.producer.context().epoch.elapsed().as_micros() as usize;
        let mut record = BaseRecord::with_opaque_to(&self.topic, sent_at)
            .key(self.key.as_str())
            .payload(self.payload.as_slice());
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // The producer's buffer is full: serve delivery reports, which frees it.
                    self.producer.poll(QUEUE_FULL_WAIT);
                    record = returned;
                }
                Err((error, _)) => {
                    let error = error.to_string();
                    MessagesFailed {
                        failed: 1,
                        delivered: 0,
                        error: &error,
                    }
                    .emit(&self.metrics);
                    anyhow::bail!("cannot produce to Kafka topic {}: {error}", self.topic);
                }
            }
        }
        self.written += 1;
        self.bytes += self.payload.len() as u64;
        // Serve the delivery reports that have arrived, without waiting.
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn publish(&mut self, counts: &RowCounts, cancel: &CancellationToken) -> anyhow::Result<()> {
        self.flush(cancel)?;
        self.settle(counts)
    }

    fn stop(&mut self, counts: &RowCounts) -> anyhow::Result<Stopped> {
        // Messages cannot be taken back once handed over: deliver them, within the shutdown
        // timeout, and count them like a finished batch.
        let stopping = CancellationToken::new();
        stopping.cancel();
        self.flush(&stopping)?;
        self.settle(counts)?;
        Ok(Stopped::Delivered)
    }
}

/// What the producer's callbacks see: where delivery reports are tallied, and librdkafka's log
/// and error lines forwarded to the service's log.
struct DeliveryContext {
    /// The origin of the send times carried as opaque values.
    epoch: Instant,
    /// The current batch's delivery reports.
    tally: Mutex<Tally>,
}

impl DeliveryContext {
    /// The tally. The lock is only taken on the write loop's thread (delivery reports are
    /// served by its `poll` and `flush` calls), so it is never contended; a poisoned lock (a
    /// panic while counting) still holds usable counts.
    fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A batch's delivery reports.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    failed: u64,
    /// The first failure's error, for the log and the run's error.
    first_error: Option<String>,
    /// Seconds from send to acknowledgment of each delivered message, observed into the
    /// histogram once per batch.
    latencies: Vec<f64>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        KafkaClientLog {
            level,
            facility,
            message,
        }
        .emit();
    }

    fn error(&self, error: KafkaError, reason: &str) {
        KafkaClientError {
            error: &error,
            reason,
        }
        .emit();
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at_micros: usize) {
        let now = self.epoch.elapsed().as_micros() as usize;
        let mut tally = self.tally();
        match result {
            Ok(_) => {
                tally.delivered += 1;
                tally
                    .latencies
                    .push(now.saturating_sub(sent_at_micros) as f64 / 1e6);
            }
            Err((error, _)) => {
                tally.failed += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(error.to_string());
                }
            }
        }
    }
}
