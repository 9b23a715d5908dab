//! Event ids the loader has recently seen stored, kept in memory so that most duplicates are
//! recognised without asking PostgreSQL.
//!
//! Duplicates in practice repeat recent events: a producer retrying a write, or an overlap
//! between consecutive files. Without this memory each such duplicate makes the optimistic COPY
//! of its chunk fail on the primary key, after which the chunk is rolled back, its ids looked up
//! and the rest copied again (see `store::copy`); at 1% duplicates that is nearly every chunk.
//! Remembering the last ids stored by the current transaction, and the last ids this process
//! committed, lets the chunk be filtered first and the COPY succeed at once.
//!
//! A hit here is only ever a *stored* event: ids enter the committed memory after their
//! transaction's COMMIT succeeded, and the transaction's memory lives within one transaction
//! attempt (a rolled-back attempt starts over with an empty one; a file rolled back to its
//! savepoint forgets what it added, see [`RecentIds::forget_since`]). Both are bounded (oldest id evicted
//! first), so memory stays fixed whatever the file size. Rows deleted from `events` by hand
//! while the ingestor runs would still be remembered for a few seconds and a re-delivery of them
//! counted as duplicates; nothing in the product deletes events while it runs (`reset` refuses).
//! No crate offers a bounded insertion-ordered set with this eviction, so it is a `VecDeque`
//! beside a `HashSet`.
//!
//! The sets of ids hash with [`IdHashing`], not std's SipHash: every row's id is hashed about
//! several times on its way (the chunk's own set, the two memories, the insertions), and with
//! SipHash that was a tenth of the ingestor's instructions.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

/// A set of at most `capacity` ids that always holds the newest [`RecentIds::holds_at_least`]
/// of them.
///
/// Ids are kept in two generations rather than evicted one by one: a new id joins the newer
/// set, and once that holds a generation's worth, the older set is emptied and the two swap.
/// Evicting the oldest id at each insert cost a removal from the set per id (with its probe
/// to a long-untouched, uncached slot, and the tombstones that make the set rehash itself
/// now and then), the largest share of the memories' cost; emptying a set at once costs a
/// few kilobytes of memset per generation.
#[derive(Debug, Default)]
pub struct RecentIds {
    /// Ids remembered since the last swap (fewer than a generation).
    newer: HashSet<Uuid, IdHashing>,
    /// The generation before.
    older: HashSet<Uuid, IdHashing>,
    /// Every remembered id, oldest first: `older`'s, then `newer`'s.
    order: VecDeque<Uuid>,
    capacity: usize,
    /// Ids ever appended to `order`: where a [`Mark`] points.
    appended: u64,
}

/// A point in a [`RecentIds`]' history: what was remembered after it can be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(u64);

impl RecentIds {
    /// An empty set remembering at most `capacity` ids (0 remembers nothing).
    pub fn new(capacity: usize) -> Self {
        RecentIds::with_room(capacity, 0)
    }

    /// Like [`RecentIds::new`], with room made at once for the first `expected` ids: a set
    /// that will fill spares itself growing by doubling, each step rehashing every id.
    pub fn with_room(capacity: usize, expected: usize) -> Self {
        let room = expected.min(capacity.div_ceil(2));
        RecentIds {
            newer: HashSet::with_capacity_and_hasher(room, IdHashing::default()),
            older: HashSet::with_hasher(IdHashing::default()),
            order: VecDeque::with_capacity(room),
            capacity,
            appended: 0,
        }
    }

    /// How many ids it remembers at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many of the newest ids are always remembered (those inserted since may have pushed
    /// older ones out): a generation's worth, `(capacity + 1) / 2`, so that both generations
    /// together (at most one and one id short of another) stay within the capacity.
    pub fn holds_at_least(&self) -> usize {
        self.capacity.div_ceil(2)
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.newer.contains(id) || self.older.contains(id)
    }

    /// Remembers `id`; false when it was remembered already (and for any id when the capacity
    /// is 0).
    pub fn insert(&mut self, id: Uuid) -> bool {
        if self.capacity == 0 || self.older.contains(&id) || !self.newer.insert(id) {
            return false;
        }
        self.order.push_back(id);
        self.appended += 1;
        if self.newer.len() >= self.holds_at_least() {
            self.order.drain(..self.older.len());
            self.older.clear();
            std::mem::swap(&mut self.newer, &mut self.older);
        }
        true
    }

    /// Where the memory stands now.
    pub fn mark(&self) -> Mark {
        Mark(self.appended)
    }

    /// Forgets the ids remembered since `mark` (their rows were rolled back). They are the
    /// newest ones, so they are at the back; those already pushed out are gone anyway.
    pub fn forget_since(&mut self, mark: Mark) {
        let since = self.appended.saturating_sub(mark.0);
        for _ in 0..since.min(self.order.len() as u64) {
            if let Some(id) = self.order.pop_back() {
                if !self.newer.remove(&id) {
                    self.older.remove(&id);
                }
            }
        }
        self.appended = self.appended.min(mark.0);
    }

    /// The remembered ids, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Uuid> {
        self.order.iter()
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The ids this process has committed most recently, shared by its loader loops.
#[derive(Debug, Clone, Default)]
pub struct CommittedIds {
    inner: Arc<Mutex<RecentIds>>,
}

impl CommittedIds {
    /// A memory of at most `capacity` committed ids (0 disables it).
    pub fn new(capacity: usize) -> Self {
        CommittedIds {
            inner: Arc::new(Mutex::new(RecentIds::new(capacity))),
        }
    }

    /// Whether each of `ids` is known to be stored, answered under one lock.
    pub fn stored<'a>(&self, ids: impl Iterator<Item = &'a Uuid>) -> Vec<bool> {
        // A poisoned lock only means another loop panicked mid-insert; the set is still
        // consistent enough to answer (at worst it misses an id, which the database catches).
        let memory = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        ids.map(|id| memory.contains(id)).collect()
    }

    /// Forgets every id: what it remembered may have been deleted since (`ingestor reset` ran
    /// while this process could not prove it was running, see `store::presence`).
    pub fn forget_all(&self) {
        let mut memory = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *memory = RecentIds::new(memory.capacity());
    }

    /// Remembers ids whose transaction has committed.
    pub fn remember<'a>(&self, ids: impl Iterator<Item = &'a Uuid>) {
        let mut memory = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            memory.insert(*id);
        }
    }
}

/// Hashing for sets of event ids: a multiply-and-fold hash (the construction of `foldhash` and
/// `ahash`) keyed with per-set random keys, a few instructions per id where SipHash spends
/// dozens.
///
/// Ids are chosen by whoever writes the files, so the keys are secret and random (drawn from
/// std's `RandomState`): without them nobody can pick ids that collide. A collision could only
/// ever slow a lookup down (the sets are bounded, at most 16,384 ids by default); no answer
/// depends on the hash.
#[derive(Debug, Clone)]
pub struct IdHashing {
    seed: u64,
    multiplier: u64,
}

impl Default for IdHashing {
    fn default() -> Self {
        let random = RandomState::new();
        IdHashing {
            seed: random.hash_one(0x243f_6a88_85a3_08d3_u64),
            // Odd, so that multiplying by it loses no bit.
            multiplier: random.hash_one(0x1319_8a2e_0370_7344_u64) | 1,
        }
    }
}

impl BuildHasher for IdHashing {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            state: self.seed,
            multiplier: self.multiplier,
        }
    }
}

/// The hasher of [`IdHashing`].
#[derive(Debug)]
pub struct IdHasher {
    state: u64,
    multiplier: u64,
}

impl IdHasher {
    fn mix(&mut self, word: u64) {
        // The full 128-bit product folded to 64 bits: every input bit reaches every output bit.
        let product = u128::from(self.state ^ word) * u128::from(self.multiplier);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // A uuid hashes as its 16 bytes (after their length): two words.
        for word in bytes.chunks(8) {
            let mut padded = [0u8; 8];
            padded[..word.len()].copy_from_slice(word);
            self.mix(u64::from_le_bytes(padded));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        let product = u128::from(self.state.rotate_left(23)) * u128::from(self.multiplier);
        (product as u64) ^ ((product >> 64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn keeps_the_newest_ids_up_to_capacity() {
        let mut recent = RecentIds::new(3);
        for n in 1..=5 {
            recent.insert(id(n));
        }
        assert_eq!(recent.len(), 3);
        assert!(!recent.contains(&id(1)) && !recent.contains(&id(2)));
        assert!(recent.contains(&id(3)) && recent.contains(&id(5)));
        assert_eq!(
            recent.iter().copied().collect::<Vec<_>>(),
            [id(3), id(4), id(5)]
        );
    }

    #[test]
    fn forgetting_since_a_mark_drops_only_what_came_after_it() {
        let mut recent = RecentIds::new(4);
        recent.insert(id(1));
        recent.insert(id(2));
        let mark = recent.mark();
        recent.insert(id(2)); // already remembered: not the file's to forget
        recent.insert(id(3));
        recent.forget_since(mark);
        assert_eq!(recent.iter().copied().collect::<Vec<_>>(), [id(1), id(2)]);
        assert!(!recent.contains(&id(3)));

        // A file that remembered more than the capacity evicted everything before it.
        let mark = recent.mark();
        for n in 10..16 {
            recent.insert(id(n));
        }
        recent.forget_since(mark);
        assert!(recent.is_empty());
        assert!((10..16).all(|n| !recent.contains(&id(n))));

        // Marks taken after a forget still point at the right place.
        recent.insert(id(20));
        let mark = recent.mark();
        recent.insert(id(21));
        recent.forget_since(mark);
        assert_eq!(recent.iter().copied().collect::<Vec<_>>(), [id(20)]);
    }

    #[test]
    fn id_hashes_spread_over_the_buckets_and_differ_between_sets() {
        let hashing = IdHashing::default();
        // Sequential ids (the worst case for a weak hash): their low bits must still spread.
        let mut buckets = [0u32; 64];
        for n in 0..64_000u128 {
            buckets[(hashing.hash_one(id(n)) & 63) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
        assert_ne!(
            hashing.hash_one(id(7)),
            IdHashing::default().hash_one(id(7)),
            "every set draws its own keys"
        );
    }

    #[test]
    fn the_newest_half_is_always_remembered_and_never_more_than_the_capacity() {
        for capacity in 1..12 {
            let mut recent = RecentIds::new(capacity);
            for n in 0..50u128 {
                recent.insert(id(n));
                assert!(
                    recent.len() <= capacity,
                    "capacity {capacity}, {n} inserted"
                );
                let newest = (n + 1).saturating_sub(recent.holds_at_least() as u128);
                assert!(
                    (newest..=n).all(|k| recent.contains(&id(k))),
                    "capacity {capacity}: the newest {} of {n} kept",
                    recent.holds_at_least()
                );
                assert!(recent.holds_at_least() * 2 >= capacity);
            }
        }
    }

    #[test]
    fn a_repeated_id_takes_one_place() {
        let mut recent = RecentIds::new(4);
        recent.insert(id(1));
        recent.insert(id(1));
        recent.insert(id(2));
        assert_eq!(recent.len(), 2);
        assert!(recent.contains(&id(1)));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut recent = RecentIds::new(0);
        recent.insert(id(1));
        assert!(recent.is_empty() && !recent.contains(&id(1)));
    }

    #[test]
    fn committed_ids_are_shared_between_clones() {
        let committed = CommittedIds::new(10);
        let other = committed.clone();
        committed.remember([id(1), id(2)].iter());
        assert_eq!(other.stored([id(2), id(3)].iter()), [true, false]);
    }
}
