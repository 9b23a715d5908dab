//! The partitions this consumer holds, shared between the consumer thread (which fills them)
//! and the loader loops (which take ranges and acknowledge them): per partition, its position
//! (where the next range starts: the stored offset it was assigned at, then the end of each
//! committed range), the messages received past it, and a generation that changes whenever the
//! position is set from outside (assignment, a seek), so that a range read before cannot move
//! it. Plain data behind one std mutex, never held across an await or a Kafka call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::message::Message;
pub use crate::model::{PartitionKey, PartitionView};

/// A range of buffered messages offered for loading.
#[derive(Debug, Clone)]
pub struct Offered {
    /// Which partition.
    pub key: PartitionKey,
    /// The position it starts from.
    pub from: i64,
    /// Its messages, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// The partition's generation when it was taken.
    pub generation: u64,
    /// When its first message arrived here.
    pub received: Instant,
}

#[derive(Debug)]
struct Partition {
    /// Where the next range starts; `None` until the first message of a partition that has no
    /// stored offset.
    position: Option<i64>,
    buffer: VecDeque<(Arc<Message>, Instant)>,
    generation: u64,
    paused: bool,
    /// Being revoked: offered no more.
    revoking: bool,
    /// Repositioned, and the seek there not made yet: what arrives meanwhile was fetched from
    /// the old position and is dropped (buffered, it would start the buffer past the new
    /// position and hide the messages between).
    awaiting_seek: bool,
    /// Since when a range of it is being loaded (opened, not yet acknowledged).
    loading_since: Option<Instant>,
    /// The newest offset the broker has (from the client's statistics).
    high_watermark: Option<i64>,
}

/// A seek the consumer thread must make: the position was set from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seek {
    /// Which partition.
    pub key: PartitionKey,
    /// To where.
    pub offset: i64,
}

/// What to tell the broker about pausing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FlowChanges {
    /// Partitions to pause.
    pub pause: Vec<PartitionKey>,
    /// Partitions to resume.
    pub resume: Vec<PartitionKey>,
}

/// The shared partition table.
#[derive(Debug, Default)]
pub struct Partitions {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    partitions: HashMap<PartitionKey, Partition>,
    seeks: Vec<Seek>,
    next_generation: u64,
}

impl Table {
    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

impl Partitions {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Partitions assigned, each at its stored position (`None`: no stored offset).
    pub fn assign(&self, assigned: impl IntoIterator<Item = (PartitionKey, Option<i64>)>) {
        let mut table = self.table();
        for (key, position) in assigned {
            let generation = table.generation();
            table.partitions.insert(
                key,
                Partition {
                    position,
                    buffer: VecDeque::new(),
                    generation,
                    paused: false,
                    revoking: false,
                    awaiting_seek: false,
                    loading_since: None,
                    high_watermark: None,
                },
            );
        }
    }

    /// Marks `keys` as being revoked: no range of them is offered any more.
    pub fn start_revoking(&self, keys: &[PartitionKey]) {
        let mut table = self.table();
        for key in keys {
            if let Some(p) = table.partitions.get_mut(key) {
                p.revoking = true;
                p.buffer.clear();
            }
        }
    }

    /// Whether a range of any of `keys` is being loaded (opened within `patience`: a batch
    /// that failed is never acknowledged, and correctness never depended on this wait).
    pub fn loading(&self, keys: &[PartitionKey], patience: Duration) -> bool {
        let table = self.table();
        keys.iter().any(|key| {
            table
                .partitions
                .get(key)
                .and_then(|p| p.loading_since)
                .is_some_and(|since| since.elapsed() < patience)
        })
    }

    /// Forgets `keys` (revoked).
    pub fn remove(&self, keys: &[PartitionKey]) {
        let mut table = self.table();
        for key in keys {
            table.partitions.remove(key);
        }
        table.seeks.retain(|s| !keys.contains(&s.key));
    }

    /// A message received; ignored unless it is past what the partition already holds (a
    /// message fetched before a seek, or fetched twice across one, must not be buffered twice).
    /// Returns whether it was buffered.
    pub fn push(&self, key: &PartitionKey, message: Message) -> bool {
        let mut table = self.table();
        let Some(p) = table.partitions.get_mut(key) else {
            return false;
        };
        if p.revoking || p.awaiting_seek {
            return false;
        }
        let newest = p.buffer.back().map(|(m, _)| m.offset);
        let fits = match (newest, p.position) {
            (Some(newest), _) => message.offset > newest,
            (None, Some(position)) => message.offset >= position,
            (None, None) => true,
        };
        if !fits {
            return false;
        }
        p.position.get_or_insert(message.offset);
        p.buffer.push_back((Arc::new(message), Instant::now()));
        true
    }

    /// The ranges ready to load: per partition, up to `max` of its oldest messages, once it
    /// holds `max` or its oldest has waited `wait`.
    pub fn ready(&self, max: usize, wait: Duration) -> Vec<Offered> {
        let table = self.table();
        let mut offered: Vec<Offered> = table
            .partitions
            .iter()
            .filter(|(_, p)| !p.revoking)
            .filter_map(|(key, p)| {
                let (_, received) = p.buffer.front()?;
                let from = p.position?;
                if p.buffer.len() < max && received.elapsed() < wait {
                    return None;
                }
                Some(Offered {
                    key: key.clone(),
                    from,
                    messages: p.buffer.iter().take(max).map(|(m, _)| m.clone()).collect(),
                    generation: p.generation,
                    received: *received,
                })
            })
            .collect();
        offered.sort_by_key(|o| o.received);
        offered
    }

    /// A range of `key` is being loaded.
    pub fn opened(&self, key: &PartitionKey) {
        if let Some(p) = self.table().partitions.get_mut(key) {
            p.loading_since = Some(Instant::now());
        }
    }

    /// A range `from..next` of `key` (taken at `generation`) committed: the position moves to
    /// `next` and its messages leave the buffer. Returns whether it applied (a range of an older
    /// generation, or of a partition no longer held, changes nothing).
    pub fn committed(&self, key: &PartitionKey, generation: u64, from: i64, next: i64) -> bool {
        let mut table = self.table();
        let Some(p) = table.partitions.get_mut(key) else {
            return false;
        };
        p.loading_since = None;
        if p.generation != generation || p.position != Some(from) {
            return false;
        }
        p.position = Some(next);
        while p.buffer.front().is_some_and(|(m, _)| m.offset < next) {
            p.buffer.pop_front();
        }
        true
    }

    /// A range of `key` ended without committing anything.
    pub fn untouched(&self, key: &PartitionKey) {
        if let Some(p) = self.table().partitions.get_mut(key) {
            p.loading_since = None;
        }
    }

    /// The stored position of `key` is `stored`, not where this consumer was (found by a claim
    /// taken at `generation`): drop what is buffered, start over from there.
    pub fn reposition(&self, key: &PartitionKey, generation: u64, stored: i64) {
        let mut table = self.table();
        let next_generation = table.generation();
        let Some(p) = table.partitions.get_mut(key) else {
            return;
        };
        // A range taken before the one that moved the partition on committed finds the stored
        // offset where this consumer already is: nothing to do.
        if p.generation != generation || p.position == Some(stored) {
            return;
        }
        p.position = Some(stored);
        p.generation = next_generation;
        p.buffer.clear();
        p.awaiting_seek = true;
        table.seeks.push(Seek {
            key: key.clone(),
            offset: stored,
        });
    }

    /// A seek that failed, to be made on the next round (if the partition is still held there).
    pub fn retry_seek(&self, seek: Seek) {
        let mut table = self.table();
        if table
            .partitions
            .get(&seek.key)
            .is_some_and(|p| p.position == Some(seek.offset))
        {
            table.seeks.push(seek);
        }
    }

    /// The seek to `offset` for `key` was made: messages arriving from now on come from there.
    pub fn seek_done(&self, key: &PartitionKey, offset: i64) {
        if let Some(p) = self.table().partitions.get_mut(key) {
            if p.position == Some(offset) {
                p.awaiting_seek = false;
            }
        }
    }

    /// Each held partition not being loaded now, with its generation and position: what
    /// [`Self::reposition_if_unchanged`] compares the stored offsets against.
    pub fn idle_positions(&self) -> Vec<(PartitionKey, u64, i64)> {
        self.table()
            .partitions
            .iter()
            .filter(|(_, p)| !p.revoking && p.loading_since.is_none())
            .filter_map(|(key, p)| Some((key.clone(), p.generation, p.position?)))
            .collect()
    }

    /// Repositions `key` to `stored` (an operator moved its stored offset) if it is still at
    /// `position` in `generation` and no range of it is being loaded; a range that committed
    /// meanwhile has moved it, and then the stored offset read before says nothing.
    pub fn reposition_if_unchanged(
        &self,
        key: &PartitionKey,
        generation: u64,
        position: i64,
        stored: i64,
    ) -> bool {
        {
            let table = self.table();
            let unchanged = table.partitions.get(key).is_some_and(|p| {
                p.generation == generation
                    && p.position == Some(position)
                    && p.loading_since.is_none()
                    && !p.revoking
            });
            if !unchanged || stored == position {
                return false;
            }
        }
        self.reposition(key, generation, stored);
        true
    }

    /// The seeks to make now.
    pub fn take_seeks(&self) -> Vec<Seek> {
        std::mem::take(&mut self.table().seeks)
    }

    /// Pauses partitions holding `max` messages or more, resumes paused ones down to half.
    pub fn flow_changes(&self, max: usize) -> FlowChanges {
        let mut table = self.table();
        let mut changes = FlowChanges::default();
        for (key, p) in &mut table.partitions {
            if !p.paused && p.buffer.len() >= max {
                p.paused = true;
                changes.pause.push(key.clone());
            } else if p.paused && p.buffer.len() <= max / 2 {
                p.paused = false;
                changes.resume.push(key.clone());
            }
        }
        changes
    }

    /// The broker's newest offset of `key`.
    pub fn set_high_watermark(&self, key: &PartitionKey, offset: i64) {
        if let Some(p) = self.table().partitions.get_mut(key) {
            p.high_watermark = Some(offset);
        }
    }

    /// Whether any partition holds messages.
    pub fn any_buffered(&self) -> bool {
        self.table()
            .partitions
            .values()
            .any(|p| !p.buffer.is_empty())
    }

    /// Every partition held, sorted.
    pub fn view(&self) -> Vec<PartitionView> {
        let table = self.table();
        let mut view: Vec<PartitionView> = table
            .partitions
            .iter()
            .map(|(key, p)| PartitionView {
                key: key.clone(),
                position: p.position,
                buffered: p.buffer.len(),
                lag: match (p.high_watermark, p.position) {
                    (Some(high), Some(position)) => Some((high - position).max(0)),
                    _ => None,
                },
                paused: p.paused,
            })
            .collect();
        view.sort_by(|a, b| a.key.cmp(&b.key));
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> PartitionKey {
        PartitionKey {
            topic: Arc::from("events"),
            partition,
        }
    }

    fn message(offset: i64) -> Message {
        Message {
            offset,
            payload: Vec::new(),
            produced_ms: None,
        }
    }

    /// Partition 0 assigned at offset 0, holding the messages at `offsets`.
    fn partition_zero_holding(offsets: std::ops::Range<i64>) -> Partitions {
        let partitions = Partitions::default();
        partitions.assign([(key(0), Some(0))]);
        for offset in offsets {
            partitions.push(&key(0), message(offset));
        }
        partitions
    }

    fn offsets(offered: &Offered) -> Vec<i64> {
        offered.messages.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn a_range_starts_at_the_position_and_committing_it_moves_the_position_past_it() {
        let partitions = Partitions::default();
        partitions.assign([(key(0), Some(10))]);
        assert!(!partitions.push(&key(0), message(9)), "before the position");
        for offset in [10, 12, 13] {
            assert!(partitions.push(&key(0), message(offset)));
        }
        assert!(!partitions.push(&key(0), message(12)), "fetched twice");
        let ready = partitions.ready(2, Duration::ZERO);
        assert_eq!(ready.len(), 1);
        assert_eq!((ready[0].from, offsets(&ready[0])), (10, vec![10, 12]));
        assert!(partitions.committed(&key(0), ready[0].generation, 10, 13));
        let next = partitions.ready(2, Duration::ZERO);
        assert_eq!((next[0].from, offsets(&next[0])), (13, vec![13]));
    }

    #[test]
    fn a_partition_without_stored_offset_starts_at_its_first_message() {
        let partitions = Partitions::default();
        partitions.assign([(key(1), None)]);
        assert!(partitions.ready(10, Duration::ZERO).is_empty());
        partitions.push(&key(1), message(500));
        assert_eq!(partitions.ready(10, Duration::ZERO)[0].from, 500);
    }

    #[test]
    fn a_reposition_drops_the_buffer_asks_for_a_seek_and_outdates_earlier_ranges() {
        let partitions = partition_zero_holding(0..5);
        let stale = partitions.ready(10, Duration::ZERO).remove(0);
        partitions.reposition(&key(0), stale.generation, 3);
        assert_eq!(
            partitions.take_seeks(),
            [Seek {
                key: key(0),
                offset: 3
            }]
        );
        assert!(!partitions.committed(&key(0), stale.generation, 0, 5));
        assert!(
            !partitions.push(&key(0), message(7)),
            "fetched from the old position before the seek"
        );
        partitions.seek_done(&key(0), 3);
        assert!(partitions.push(&key(0), message(3)));
        assert_eq!(partitions.ready(10, Duration::ZERO)[0].from, 3);
    }

    #[test]
    fn a_stored_offset_moved_by_an_operator_repositions_an_idle_partition_only() {
        let partitions = Partitions::default();
        partitions.assign([(key(0), Some(50)), (key(1), Some(7))]);
        partitions.opened(&key(1));
        let idle = partitions.idle_positions();
        assert_eq!(idle.len(), 1, "a partition being loaded is not compared");
        let (k, generation, position) = idle[0].clone();
        assert!(!partitions.reposition_if_unchanged(&k, generation, position, 50));
        partitions.push(&key(0), message(50));
        let range = partitions.ready(10, Duration::ZERO).remove(0);
        partitions.committed(&key(0), range.generation, 50, 51);
        assert!(
            !partitions.reposition_if_unchanged(&k, generation, position, 0),
            "moved on since the stored offset was read"
        );
        let (k, generation, position) = partitions.idle_positions().remove(0);
        assert!(partitions.reposition_if_unchanged(&k, generation, position, 0));
        assert_eq!(partitions.take_seeks()[0].offset, 0);
    }

    #[test]
    fn a_stale_range_finding_the_stored_offset_where_the_consumer_is_changes_nothing() {
        let partitions = partition_zero_holding(0..6);
        let first = partitions.ready(3, Duration::ZERO).remove(0);
        let stale = first.clone();
        assert!(partitions.committed(&key(0), first.generation, 0, 3));
        // The stale copy's claim finds the stored offset at 3, where the consumer already is.
        partitions.reposition(&key(0), stale.generation, 3);
        assert!(partitions.take_seeks().is_empty());
        let next = partitions.ready(10, Duration::ZERO).remove(0);
        assert_eq!((next.from, offsets(&next)), (3, vec![3, 4, 5]));
    }

    #[test]
    fn a_batch_waits_for_more_until_it_is_full_or_old_enough() {
        let partitions = Partitions::default();
        partitions.assign([(key(0), Some(0))]);
        partitions.push(&key(0), message(0));
        assert!(partitions.ready(2, Duration::from_secs(60)).is_empty());
        partitions.push(&key(0), message(1));
        assert_eq!(partitions.ready(2, Duration::from_secs(60)).len(), 1);
    }

    #[test]
    fn a_full_partition_is_paused_and_resumed_at_half() {
        let partitions = partition_zero_holding(0..4);
        assert_eq!(partitions.flow_changes(4).pause, [key(0)]);
        assert_eq!(partitions.flow_changes(4), FlowChanges::default());
        let ready = partitions.ready(10, Duration::ZERO).remove(0);
        partitions.committed(&key(0), ready.generation, 0, 3);
        assert_eq!(partitions.flow_changes(4).resume, [key(0)]);
    }

    #[test]
    fn a_revoked_partition_offers_nothing_and_is_forgotten() {
        let partitions = Partitions::default();
        partitions.assign([(key(0), Some(0)), (key(1), Some(0))]);
        partitions.push(&key(0), message(0));
        partitions.push(&key(1), message(0));
        partitions.opened(&key(0));
        partitions.start_revoking(&[key(0)]);
        assert_eq!(partitions.ready(10, Duration::ZERO).len(), 1);
        assert!(partitions.loading(&[key(0)], Duration::from_secs(60)));
        partitions.untouched(&key(0));
        assert!(!partitions.loading(&[key(0)], Duration::from_secs(60)));
        partitions.remove(&[key(0)]);
        assert!(!partitions.push(&key(0), message(1)));
        assert_eq!(partitions.view().len(), 1);
    }
}
