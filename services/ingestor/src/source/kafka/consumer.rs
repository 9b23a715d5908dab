//! The consumer thread: one librdkafka consumer in a consumer group, polled on a thread of its
//! own (its callbacks block: an assignment waits for PostgreSQL's stored offsets, a revocation
//! for the batch in flight). It starts every assigned partition at the offset stored in
//! PostgreSQL (`store::offsets`), buffers what it receives in [`Partitions`], pauses partitions
//! whose buffer is full, makes the seeks a claim asked for, and reports whether the cluster is
//! reachable.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::message::Message;
use super::partitions::{PartitionKey, Partitions};
use crate::config::{KafkaSettings, KafkaStart};
use crate::internal_events::{
    KafkaBrokerReachable, KafkaBrokerUnreachable, KafkaClientLog, KafkaConsumeFailed,
    KafkaPartitionsAssigned, KafkaPartitionsRevoked, KafkaPositionsUnavailable, KafkaSeekFailed,
    KafkaStoredOffsetMoved, Metrics,
};
use crate::readiness::Readiness;
use crate::store::{offsets, Pool};

/// How long one poll waits for a message; also how often seeks, pauses and health are looked at.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// Messages taken per poll round before the thread looks at its other duties again.
const MESSAGES_PER_ROUND: usize = 2_048;
/// How often an unreachable cluster is asked again for its metadata.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the stored offsets of idle partitions are compared with where this consumer is,
/// so that an operator's replay (a lowered `source_offsets.next_offset`) starts without a restart.
const STORED_OFFSETS_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long that comparison waits for PostgreSQL.
const STORED_OFFSETS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often librdkafka reports statistics (high watermarks, for the lag).
const STATISTICS_EVERY_MS: &str = "1000";

/// The consumer as the source and its thread share it.
pub type SharedConsumer = Arc<BaseConsumer<IngestContext>>;

/// What the consumer's callbacks need.
pub struct IngestContext {
    partitions: Arc<Partitions>,
    settings: KafkaSettings,
    pool: Pool,
    runtime: Handle,
    cancel: CancellationToken,
    readiness: Readiness,
    metrics: Metrics,
    /// How long a revocation waits for the batch in flight.
    drain_timeout: Duration,
}

/// Everything the thread is started with.
pub struct ConsumerParts {
    /// The partition table it fills.
    pub partitions: Arc<Partitions>,
    /// The Kafka settings.
    pub settings: KafkaSettings,
    /// The database pool (stored offsets at assignment).
    pub pool: Pool,
    /// Stops the thread.
    pub cancel: CancellationToken,
    /// Where the cluster's reachability is reported.
    pub readiness: Readiness,
    /// Metrics.
    pub metrics: Metrics,
    /// How long a revocation waits for the batch in flight.
    pub drain_timeout: Duration,
    /// This instance's name, as the group member's client id.
    pub instance_id: String,
}

/// Creates the consumer (a bad client option stops start-up here, naming it) and starts the
/// thread polling it; the loops are woken through `wake` whenever messages wait.
///
/// # Errors
/// When librdkafka refuses the configuration or the subscription.
pub fn start(
    parts: ConsumerParts,
    wake: Arc<watch::Sender<u64>>,
) -> anyhow::Result<(SharedConsumer, JoinHandle<()>)> {
    let config = client_config(&parts.settings, &parts.instance_id);
    let context = IngestContext {
        partitions: parts.partitions,
        settings: parts.settings,
        pool: parts.pool,
        runtime: Handle::current(),
        cancel: parts.cancel,
        readiness: parts.readiness,
        metrics: parts.metrics,
        drain_timeout: parts.drain_timeout,
    };
    let consumer: BaseConsumer<IngestContext> = config
        .create_with_context(context)
        .context("the Kafka client refused its configuration (see kafka_client_options)")?;
    let topics: Vec<&str> = consumer
        .context()
        .settings
        .topics
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("cannot subscribe to {topics:?}"))?;
    let consumer = Arc::new(consumer);
    let polled = consumer.clone();
    let thread = std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || poll_until_cancelled(&polled, &wake))
        .context("cannot start the Kafka consumer thread")?;
    Ok((consumer, thread))
}

/// The client's configuration: the settings the exactly-once design depends on, then the
/// user's pass-through options (which cannot override those: `config` refuses them).
fn client_config(settings: &KafkaSettings, instance_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("client.id", format!("event-ingest-{instance_id}"))
        // Offsets live in PostgreSQL; what is committed to Kafka (stored by `acknowledge`,
        // committed in the background) is only a lag hint for Kafka's own tools.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("enable.partition.eof", "false")
        // Incremental rebalancing: a member joining or leaving moves only the partitions that
        // change owner; the others keep loading.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Only for a stored offset the broker no longer has (retention): its oldest message.
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", STATISTICS_EVERY_MS);
    for (key, value) in &settings.client_options {
        config.set(key, value);
    }
    if let Some(password) = &settings.sasl_password {
        config.set("sasl.password", password);
    }
    config
}

/// The thread's loop: seeks, pauses, messages, health; until shutdown, then it leaves the group
/// (revoking its partitions the usual way).
fn poll_until_cancelled(consumer: &SharedConsumer, wake: &watch::Sender<u64>) {
    let context = consumer.context().clone();
    let mut topics: Vec<Arc<str>> = context
        .settings
        .topics
        .iter()
        .map(|t| Arc::from(t.name.as_str()))
        .collect();
    let mut last_health_check = Instant::now();
    let mut last_offsets_check = Instant::now();
    while !context.cancel.is_cancelled() {
        if last_offsets_check.elapsed() >= STORED_OFFSETS_CHECK_EVERY {
            last_offsets_check = Instant::now();
            context.follow_stored_offsets();
        }
        make_seeks(consumer);
        apply_flow(consumer);
        let received = receive(consumer, &mut topics);
        if received > 0 || context.partitions.any_buffered() {
            wake.send_modify(|n| *n = n.wrapping_add(1));
        }
        if context.readiness.source_down_reason().is_some()
            && last_health_check.elapsed() >= HEALTH_CHECK_EVERY
        {
            last_health_check = Instant::now();
            check_health(consumer);
        }
    }
    consumer.unsubscribe();
    // The revocation runs in a poll; give it the drain timeout at most.
    let deadline = Instant::now() + context.drain_timeout;
    while Instant::now() < deadline
        && consumer
            .assignment()
            .is_ok_and(|assigned| assigned.count() > 0)
    {
        let _ = consumer.poll(POLL_WAIT);
    }
}

/// Takes up to a round's messages into the partition table; returns how many arrived.
fn receive(consumer: &SharedConsumer, topics: &mut Vec<Arc<str>>) -> usize {
    let context = consumer.context();
    let mut received = 0;
    let mut wait = POLL_WAIT;
    while received < MESSAGES_PER_ROUND {
        match consumer.poll(wait) {
            None => break,
            Some(Err(error)) => {
                KafkaConsumeFailed { error: &error }.emit(&context.metrics);
                break;
            }
            Some(Ok(message)) => {
                received += 1;
                wait = Duration::ZERO;
                let key = PartitionKey {
                    topic: interned(topics, message.topic()),
                    partition: message.partition(),
                };
                let message = Message {
                    offset: message.offset(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    produced_ms: message.timestamp().to_millis(),
                };
                context.partitions.push(&key, message);
            }
        }
    }
    context.metrics.kafka_messages_received(received);
    received
}

/// The shared name of `topic` (topics are few: a list beats a map).
fn interned(topics: &mut Vec<Arc<str>>, topic: &str) -> Arc<str> {
    if let Some(known) = topics.iter().find(|t| &***t == topic) {
        return known.clone();
    }
    let name: Arc<str> = Arc::from(topic);
    topics.push(name.clone());
    name
}

/// The seeks claims asked for (a partition's stored offset was not where this consumer was).
fn make_seeks(consumer: &SharedConsumer) {
    let context = consumer.context();
    for seek in context.partitions.take_seeks() {
        let done = consumer.seek(
            &seek.key.topic,
            seek.key.partition,
            Offset::Offset(seek.offset),
            Duration::from_secs(5),
        );
        match done {
            Ok(()) => context.partitions.seek_done(&seek.key, seek.offset),
            Err(error) => {
                KafkaSeekFailed {
                    partition: &seek.key,
                    offset: seek.offset,
                    error: &error,
                }
                .emit(&context.metrics);
                // Asked again on the next round: until a seek is made, nothing of the
                // partition is buffered.
                context.partitions.retry_seek(seek);
            }
        }
    }
}

/// Pauses partitions whose buffer is full and resumes drained ones.
fn apply_flow(consumer: &SharedConsumer) {
    let context = consumer.context();
    let changes = context
        .partitions
        .flow_changes(context.settings.buffer_max_messages);
    let list = |keys: &[PartitionKey]| {
        let mut tpl = TopicPartitionList::new();
        for key in keys {
            tpl.add_partition(&key.topic, key.partition);
        }
        tpl
    };
    if !changes.pause.is_empty() {
        if let Err(error) = consumer.pause(&list(&changes.pause)) {
            KafkaConsumeFailed { error: &error }.emit(&context.metrics);
        }
    }
    if !changes.resume.is_empty() {
        if let Err(error) = consumer.resume(&list(&changes.resume)) {
            KafkaConsumeFailed { error: &error }.emit(&context.metrics);
        }
    }
}

/// Asks the cluster for a topic's metadata; an answer means it is reachable again.
fn check_health(consumer: &SharedConsumer) {
    let context = consumer.context();
    let topic = context.settings.topics.first().map(|t| t.name.as_str());
    if consumer
        .fetch_metadata(topic, Duration::from_secs(1))
        .is_ok()
    {
        context.readiness.source_up();
        KafkaBrokerReachable.emit(&context.metrics);
    }
}

impl IngestContext {
    /// Repositions idle partitions whose stored offset is not where this consumer is (an
    /// operator moved it back to replay, or forward to skip); a database that does not answer
    /// in time only postpones this to the next round.
    fn follow_stored_offsets(&self) {
        let idle = self.partitions.idle_positions();
        if idle.is_empty() {
            return;
        }
        let read = self.runtime.block_on(async {
            tokio::time::timeout(STORED_OFFSETS_CHECK_TIMEOUT, async {
                let conn = self.pool.get().await.context("no database connection")?;
                let mut stored = Vec::new();
                for (key, _, _) in &idle {
                    let found =
                        offsets::stored_positions(&**conn, &key.topic, &[key.partition]).await?;
                    stored.push(found.get(&key.partition).copied());
                }
                anyhow::Ok(stored)
            })
            .await
        });
        let Ok(Ok(stored)) = read else {
            return;
        };
        for ((key, generation, position), stored) in idle.iter().zip(stored) {
            let Some(stored) = stored else { continue };
            if self
                .partitions
                .reposition_if_unchanged(key, *generation, *position, stored)
            {
                KafkaStoredOffsetMoved {
                    partition: key,
                    from: *position,
                    to: stored,
                }
                .emit(&self.metrics);
            }
        }
    }

    /// The stored offsets of `tpl`'s partitions, asked again (every second) while PostgreSQL
    /// cannot answer: a partition must not start anywhere else. `None` on shutdown.
    fn stored_positions(
        &self,
        tpl: &TopicPartitionList,
    ) -> Option<Vec<(PartitionKey, Option<i64>)>> {
        let mut by_topic: Vec<(String, Vec<i32>)> = Vec::new();
        for element in tpl.elements() {
            match by_topic.iter_mut().find(|(t, _)| t == element.topic()) {
                Some((_, partitions)) => partitions.push(element.partition()),
                None => by_topic.push((element.topic().to_owned(), vec![element.partition()])),
            }
        }
        loop {
            let read = self.runtime.block_on(async {
                let conn = self.pool.get().await.context("no database connection")?;
                let mut positions = Vec::new();
                for (topic, partitions) in &by_topic {
                    let stored = offsets::stored_positions(&**conn, topic, partitions).await?;
                    let topic: Arc<str> = Arc::from(topic.as_str());
                    positions.extend(partitions.iter().map(|p| {
                        let key = PartitionKey {
                            topic: topic.clone(),
                            partition: *p,
                        };
                        (key, stored.get(p).copied())
                    }));
                }
                anyhow::Ok(positions)
            });
            match read {
                Ok(positions) => return Some(positions),
                Err(error) => KafkaPositionsUnavailable { error: &error }.emit(&self.metrics),
            }
            if self.cancel.is_cancelled() {
                return None;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let positions = self.stored_positions(tpl);
        for (key, stored) in positions.iter().flatten() {
            let offset = match (stored, self.settings.start) {
                (Some(offset), _) => Offset::Offset(*offset),
                (None, KafkaStart::Earliest) => Offset::Beginning,
                (None, KafkaStart::Latest) => Offset::End,
            };
            if let Err(error) = tpl.set_partition_offset(&key.topic, key.partition, offset) {
                KafkaConsumeFailed { error: &error }.emit(&self.metrics);
            }
        }
        if let Some(positions) = positions {
            KafkaPartitionsAssigned {
                positions: &positions,
            }
            .emit(&self.metrics);
            self.partitions.assign(positions);
        }
        let assigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(error) = assigned {
            KafkaConsumeFailed { error: &error }.emit(&self.metrics);
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let keys: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| PartitionKey {
                topic: Arc::from(e.topic()),
                partition: e.partition(),
            })
            .collect();
        self.partitions.start_revoking(&keys);
        // The batch in flight commits or rolls back before the partitions are released, so the
        // next owner starts from where it ended. Correctness does not rest on this wait (the
        // stored offset is moved only from where a range starts), only the waste of a range
        // loaded by nobody.
        let started = Instant::now();
        while self.partitions.loading(&keys, self.drain_timeout)
            && started.elapsed() < self.drain_timeout
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.partitions.remove(&keys);
        KafkaPartitionsRevoked {
            partitions: &keys,
            waited: started.elapsed(),
        }
        .emit(&self.metrics);
        let released = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(error) = released {
            KafkaConsumeFailed { error: &error }.emit(&self.metrics);
        }
    }
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        KafkaClientLog {
            level,
            facility,
            message,
        }
        .emit(&self.metrics);
    }

    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            let name: Arc<str> = Arc::from(name.as_str());
            for partition in topic.partitions.values().filter(|p| p.partition >= 0) {
                let newest = if partition.ls_offset >= 0 {
                    partition.ls_offset
                } else {
                    partition.hi_offset
                };
                if newest >= 0 {
                    let key = PartitionKey {
                        topic: name.clone(),
                        partition: partition.partition,
                    };
                    self.partitions.set_high_watermark(&key, newest);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let unreachable = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        );
        if unreachable {
            self.readiness.source_down(format!(
                "Kafka cluster unreachable ({}): {reason}",
                self.settings.brokers
            ));
        }
        KafkaBrokerUnreachable {
            error: &error,
            reason,
            unreachable,
        }
        .emit(&self.metrics);
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(base_consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(base_consumer, tpl),
            other => {
                let error = KafkaError::Rebalance(other.into());
                KafkaConsumeFailed { error: &error }.emit(&self.metrics);
                // As librdkafka asks: drop the assignment; the group assigns again.
                self.revoke(base_consumer, tpl);
            }
        }
    }
}
