//! A partition's range of messages as the loader's unit of work: claimed by moving the
//! partition's stored offset from where the range starts to where it ends, in the loading
//! transaction, next to its ledger entry and its `log_ranges` row.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use event_contract::ValidationContext;
use tokio::sync::mpsc;
use tokio_postgres::Transaction;

use super::message::{self, Message};
use super::partitions::{Offered, PartitionKey, Partitions};
use crate::config::MessageFormat;
use crate::internal_events::{KafkaRangeOutOfStep, Metrics};
use crate::model::{FileFailure, FileIdentity};
use crate::source::reader::{Chunk, ReadEnd, ReadMessage, ReadOptions};
use crate::source::{NotOpened, Opened, Unit};
use crate::store::ledger::{self, Claim};
use crate::store::offsets::{self, Advance};
use crate::store::pool::{classify, Failure};

/// A partition's messages `from..next` (offsets between may be missing).
#[derive(Clone)]
pub struct MessageRange {
    inner: Arc<RangeInner>,
}

impl std::fmt::Debug for MessageRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageRange")
            .field("name", &self.inner.name)
            .field("generation", &self.inner.offered.generation)
            .finish_non_exhaustive()
    }
}

struct RangeInner {
    offered: Offered,
    next: i64,
    name: String,
    size: u64,
    landed: SystemTime,
    format: MessageFormat,
    partitions: Arc<Partitions>,
    metrics: Metrics,
    /// Makes this process's ledger identities its own (see [`MessageRange::identity`]).
    nonce: [u8; 16],
}

impl MessageRange {
    /// The range `offered` holds, in `format`.
    pub(super) fn new(
        offered: Offered,
        format: MessageFormat,
        partitions: Arc<Partitions>,
        metrics: Metrics,
        nonce: [u8; 16],
    ) -> Option<Self> {
        let last = offered.messages.last()?.offset;
        let next = last + 1;
        let name = format!(
            "kafka:{}/{}@{}..{next}",
            offered.key.topic, offered.key.partition, offered.from
        );
        let size = offered
            .messages
            .iter()
            .map(|m| m.payload.len() as u64)
            .sum();
        let landed = offered
            .messages
            .first()
            .and_then(|m| m.produced_ms)
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or_else(
                || SystemTime::now() - offered.received.elapsed(),
                |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
            );
        Some(MessageRange {
            inner: Arc::new(RangeInner {
                offered,
                next,
                name,
                size,
                landed,
                format,
                partitions,
                metrics,
                nonce,
            }),
        })
    }

    /// Which partition.
    pub fn partition(&self) -> &PartitionKey {
        &self.inner.offered.key
    }

    /// The position it starts from and the one it leaves behind.
    pub fn bounds(&self) -> (i64, i64) {
        (self.inner.offered.from, self.inner.next)
    }

    /// The partition's generation it was taken at.
    pub fn generation(&self) -> u64 {
        self.inner.offered.generation
    }

    /// Its messages.
    pub fn messages(&self) -> &[Arc<Message>] {
        &self.inner.offered.messages
    }

    /// The ledger identity: the range's position (topic, partition, bounds, generation) and
    /// this process's nonce, not its content. Exactly-once rests on the stored offset, which a
    /// range can move only from where it starts; a content identity would, on a deliberate
    /// replay (the stored offset moved back), call ranges "already loaded" instead of counting
    /// their events as duplicates one by one.
    fn identity(&self) -> FileIdentity {
        let inner = &self.inner;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&inner.nonce);
        hasher.update(inner.offered.key.topic.as_bytes());
        hasher.update(&inner.offered.key.partition.to_le_bytes());
        hasher.update(&inner.offered.from.to_le_bytes());
        hasher.update(&inner.next.to_le_bytes());
        hasher.update(&inner.offered.generation.to_le_bytes());
        FileIdentity {
            size: inner.size,
            hash: *hasher.finalize().as_bytes(),
        }
    }
}

impl Unit for MessageRange {
    /// The partition and where the range starts: a loop takes a range only while no other loop
    /// holds the same start, and the next range (which starts elsewhere) is not held up by the
    /// pause a finished unit gets.
    type Key = (PartitionKey, i64);
    type Opened = OpenedRange;

    fn key(&self) -> Self::Key {
        (self.inner.offered.key.clone(), self.inner.offered.from)
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn size(&self) -> u64 {
        self.inner.size
    }

    fn landed(&self) -> SystemTime {
        self.inner.landed
    }

    fn open(&self) -> Result<OpenedRange, NotOpened> {
        self.inner.partitions.opened(&self.inner.offered.key);
        Ok(OpenedRange {
            identity: self.identity(),
            range: self.clone(),
        })
    }
}

/// A range opened: its messages are in memory already.
#[derive(Debug)]
pub struct OpenedRange {
    range: MessageRange,
    identity: FileIdentity,
}

impl Opened for OpenedRange {
    /// Nothing: the acknowledgement reads what it needs from the unit.
    type Receipt = ();

    fn identity(&self) -> FileIdentity {
        self.identity
    }

    fn receipt(&self) {}

    async fn claim(&self, tx: &Transaction<'_>, instance: &str) -> anyhow::Result<Claim> {
        if !self.advance(tx, instance).await? {
            return Ok(Claim::Busy);
        }
        let range = &self.range;
        let claim =
            ledger::claim(tx, &self.identity, range.name(), range.landed(), instance).await?;
        if let Claim::Claimed { file_id } = claim {
            self.record_range(tx, file_id).await?;
        }
        Ok(claim)
    }

    async fn record_failed(
        &self,
        tx: &Transaction<'_>,
        instance: &str,
        failure: &FileFailure,
    ) -> anyhow::Result<i64> {
        let range = &self.range;
        anyhow::ensure!(
            self.advance(tx, instance).await?,
            "{} is no longer the partition's next range",
            range.name()
        );
        let file_id = ledger::record_failed(
            tx,
            &self.identity,
            range.name(),
            range.landed(),
            instance,
            failure,
        )
        .await?;
        self.record_range(tx, file_id).await?;
        Ok(file_id)
    }

    fn read_rows(&self, options: ReadOptions, sender: &mpsc::Sender<ReadMessage>) {
        let ctx = ValidationContext {
            now: Utc::now(),
            max_future_skew: options.max_future_skew,
        };
        let validated = message::validate(
            self.range.messages(),
            self.range.inner.format,
            &ctx,
            options.max_line_bytes,
        );
        let end = match validated {
            Err(e) => ReadEnd::Interrupted(e),
            Ok(validated) => {
                let mut events = validated.events.into_iter().peekable();
                let mut rejections = validated.rejections;
                loop {
                    let chunk = Chunk {
                        events: events.by_ref().take(options.chunk_rows.max(1)).collect(),
                        // Few, and each capped: they travel with the last chunk.
                        rejections: if events.peek().is_none() {
                            std::mem::take(&mut rejections)
                        } else {
                            Vec::new()
                        },
                    };
                    let last = events.peek().is_none();
                    if (!chunk.events.is_empty() || !chunk.rejections.is_empty())
                        && sender.blocking_send(ReadMessage::Chunk(chunk)).is_err()
                    {
                        return;
                    }
                    if last {
                        break;
                    }
                }
                ReadEnd::Done(self.identity)
            }
        };
        let _ = sender.blocking_send(ReadMessage::End(end));
    }
}

impl OpenedRange {
    /// Moves the partition's stored offset over this range; `false` when it is not where the
    /// range starts (the partition is then read again from where it is) or another transaction
    /// is moving it (the range is offered again).
    async fn advance(&self, tx: &Transaction<'_>, instance: &str) -> anyhow::Result<bool> {
        let range = &self.range;
        let key = range.partition();
        let (from, next) = range.bounds();
        match offsets::advance(tx, &key.topic, key.partition, from, next, instance).await {
            Ok(Advance::Advanced) => Ok(true),
            Ok(Advance::OutOfStep { stored }) => {
                KafkaRangeOutOfStep {
                    name: range.name(),
                    stored,
                }
                .emit(&range.inner.metrics);
                range
                    .inner
                    .partitions
                    .reposition(key, range.generation(), stored);
                Ok(false)
            }
            // Another consumer's transaction holds the partition's row (a rebalance that has
            // not settled): undo this range (the loader rolls back to its savepoint) and let the
            // partition be offered again once that one ended.
            Err(e) if classify(&e) == Failure::Conflict => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn record_range(&self, tx: &Transaction<'_>, file_id: i64) -> anyhow::Result<()> {
        let key = self.range.partition();
        let (from, next) = self.range.bounds();
        offsets::record_range(tx, file_id, &key.topic, key.partition, from, next).await
    }
}
