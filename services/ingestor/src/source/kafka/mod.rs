//! The Kafka source (`source = "kafka"`): the topics' partitions, shared with the other
//! ingestors of the consumer group, loaded exactly once. A unit is a range of one partition's
//! messages ([`MessageRange`]); claiming it moves the partition's offset stored in PostgreSQL
//! from where the range starts to where it ends, in the transaction that stores its rows, and
//! every assigned partition starts at that stored offset. docs/architecture.md ("The Kafka
//! source") gives the whole argument: crashes before and after COMMIT, rebalances, replays.
//!
//! - [`consumer`]: the librdkafka consumer on its own thread (assignment, revocation, seeks,
//!   backpressure, cluster health);
//! - [`partitions`]: what it holds per partition, shared with the loader loops;
//! - [`range`]: a range as the loader's unit, and its claim;
//! - [`message`]: where a message becomes a row, through the event contract.

mod consumer;
pub mod message;
pub mod partitions;
mod range;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rdkafka::consumer::Consumer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaSettings, Settings};
use crate::internal_events::{KafkaBacklogObserved, KafkaRangeSettled, Metrics};
use crate::model::Settled;
use crate::readiness::Readiness;
use crate::source::Source;
use crate::store::Pool;

pub use crate::model::{PartitionKey, PartitionView};
pub use partitions::Partitions;
pub use range::{MessageRange, OpenedRange};

use consumer::{ConsumerParts, SharedConsumer};

/// The Kafka source of one ingestor process.
pub struct KafkaSource {
    settings: KafkaSettings,
    partitions: Arc<Partitions>,
    consumer: SharedConsumer,
    wake: Arc<watch::Sender<u64>>,
    metrics: Metrics,
    nonce: [u8; 16],
    /// Joined when the source is dropped, after the loops stopped.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl KafkaSource {
    /// Creates the consumer, joins the group and starts polling; partitions load once assigned.
    ///
    /// # Errors
    /// When the client refuses its configuration (naming the option) or the subscription.
    pub fn start(
        settings: &Arc<Settings>,
        kafka: KafkaSettings,
        pool: Pool,
        readiness: Readiness,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let partitions = Arc::new(Partitions::default());
        let wake = Arc::new(watch::Sender::new(0));
        let parts = ConsumerParts {
            partitions: partitions.clone(),
            settings: kafka.clone(),
            pool,
            cancel,
            readiness,
            metrics: metrics.clone(),
            drain_timeout: settings.drain_timeout,
            instance_id: settings.instance_id.clone(),
        };
        let (consumer, thread) = consumer::start(parts, wake.clone())?;
        metrics.kafka_source_started();
        Ok(KafkaSource {
            settings: kafka,
            partitions,
            consumer,
            wake,
            metrics,
            nonce: *uuid::Uuid::new_v4().as_bytes(),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The partitions held now, for reports.
    pub fn partitions(&self) -> Vec<PartitionView> {
        self.partitions.view()
    }

    /// The format of `topic`'s messages.
    fn format_of(&self, topic: &str) -> crate::config::MessageFormat {
        self.settings
            .topics
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.format)
            .unwrap_or_default()
    }
}

impl Source for KafkaSource {
    type Unit = MessageRange;

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    fn ready(&self, _metrics: &Metrics) -> Vec<MessageRange> {
        self.partitions
            .ready(self.settings.batch_max_messages, self.settings.batch_wait)
            .into_iter()
            .filter_map(|offered| {
                let format = self.format_of(&offered.key.topic);
                MessageRange::new(
                    offered,
                    format,
                    self.partitions.clone(),
                    self.metrics.clone(),
                    self.nonce,
                )
            })
            .collect()
    }

    fn report_backlog(&self, metrics: &Metrics) {
        KafkaBacklogObserved {
            partitions: &self.partitions.view(),
        }
        .emit(metrics);
    }

    /// A range that committed (loaded, or failed as a whole) moves the partition on; its end
    /// is stored in Kafka too, as a lag hint for Kafka's own tools. Anything else leaves the
    /// partition where it was, to be offered again.
    fn acknowledge(
        &self,
        unit: &MessageRange,
        settled: Settled<'_, ()>,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        let key = unit.partition();
        let (from, next) = unit.bounds();
        let committed = matches!(
            settled,
            Settled::Loaded { .. } | Settled::Failed { .. } | Settled::Known { .. }
        );
        if !committed {
            self.partitions.untouched(key);
            KafkaRangeSettled {
                outcome: "retried",
                produced_ms: &[],
            }
            .emit(metrics);
            return Ok(());
        }
        let moved = self
            .partitions
            .committed(key, unit.generation(), from, next);
        let produced_ms: Vec<i64> = unit
            .messages()
            .iter()
            .filter_map(|m| m.produced_ms)
            .collect();
        KafkaRangeSettled {
            outcome: if matches!(settled, Settled::Failed { .. }) {
                "failed"
            } else {
                "loaded"
            },
            produced_ms: &produced_ms,
        }
        .emit(metrics);
        if moved {
            self.consumer
                .store_offset(&key.topic, key.partition, next)
                .map_err(|e| {
                    anyhow::anyhow!("cannot store the lag hint offset {next} of {key}: {e}")
                })?;
        }
        Ok(())
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // The thread stops on the cancellation the loops stopped on; it then leaves the
            // group within the drain timeout.
            let _ = thread.join();
        }
    }
}
