//! Event ids the loader has recently seen stored, kept in memory so that most duplicates are
//! recognised without asking PostgreSQL.
//!
//! Duplicates in practice repeat recent events: a producer retrying a write, or an overlap
//! between consecutive files. Without this memory each such duplicate makes the optimistic COPY
//! of its chunk fail on the primary key, after which the chunk is rolled back, its ids looked up
//! and the rest copied again (see `store::copy`); at 1% duplicates that is nearly every chunk.
//! Remembering the last ids of the current file, and the last ids this process committed, lets
//! the chunk be filtered first and the COPY succeed at once.
//!
//! A hit here is only ever a *stored* event: ids enter the committed memory after their
//! transaction's COMMIT succeeded, and the per-file memory lives within one transaction attempt
//! (a rolled-back attempt starts over with an empty one). Both are bounded (oldest id evicted
//! first), so memory stays fixed whatever the file size. Rows deleted from `events` by hand
//! while the ingestor runs would still be remembered for a few seconds and a re-delivery of them
//! counted as duplicates; nothing in the product deletes events while it runs (`reset` refuses).
//! No crate offers a bounded insertion-ordered set with this eviction, so it is a `VecDeque`
//! beside a `HashSet`.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

/// A set of at most `capacity` ids; inserting into a full set evicts the oldest.
#[derive(Debug, Default)]
pub struct RecentIds {
    order: VecDeque<Uuid>,
    set: HashSet<Uuid>,
    capacity: usize,
}

impl RecentIds {
    /// An empty set remembering at most `capacity` ids (0 remembers nothing).
    pub fn new(capacity: usize) -> Self {
        RecentIds {
            order: VecDeque::new(),
            set: HashSet::new(),
            capacity,
        }
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.set.contains(id)
    }

    /// Remembers `id`, evicting the oldest id when full.
    pub fn insert(&mut self, id: Uuid) {
        if self.capacity == 0 || !self.set.insert(id) {
            return;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
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
        *memory = RecentIds::new(memory.capacity);
    }

    /// Remembers ids whose transaction has committed.
    pub fn remember<'a>(&self, ids: impl Iterator<Item = &'a Uuid>) {
        let mut memory = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            memory.insert(*id);
        }
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
    fn a_repeated_id_takes_one_place() {
        let mut recent = RecentIds::new(2);
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
