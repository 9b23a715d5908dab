//! Whether this replica can load, tracked in one place: the loader loops report what their
//! batches did, `/readyz` and `/healthz` read it, and the `ingestor_ready` and
//! `ingestor_database_up` gauges follow from it.
//!
//! Readiness is more than "the database answers `SELECT 1`": the database may answer yet refuse
//! every batch for a reason no retry fixes (a missing table, column or privilege, a setting
//! PostgreSQL rejects). The loop whose batch failed that way records the reason here, so
//! `/readyz` says why nothing loads; the next commit, or an empty input directory, clears it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::internal_events::Metrics;

/// The shared readiness state; cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
    metrics: Metrics,
}

struct Inner {
    /// The loader task runs (liveness).
    loader_alive: AtomicBool,
    /// Why loading is blocked by an error no retry fixes, if it is. A std mutex: held only to
    /// copy a string, never across an await.
    blocked: Mutex<Option<String>>,
    /// Why the source cannot deliver work (a Kafka cluster out of reach), if it cannot; set
    /// and cleared by the source.
    source_down: Mutex<Option<String>>,
}

impl Readiness {
    /// A replica whose loader runs and is not blocked.
    pub fn new(metrics: Metrics) -> Self {
        Readiness {
            inner: Arc::new(Inner {
                loader_alive: AtomicBool::new(true),
                blocked: Mutex::new(None),
                source_down: Mutex::new(None),
            }),
            metrics,
        }
    }

    /// Whether the loader task still runs.
    pub fn loader_alive(&self) -> bool {
        self.inner.loader_alive.load(Ordering::Relaxed)
    }

    /// The loader task ended (an error or shutdown): the replica is neither live nor ready.
    pub fn loader_stopped(&self) {
        self.inner.loader_alive.store(false, Ordering::Relaxed);
        self.metrics.set_ready(false);
    }

    /// Why loading is blocked, if it is.
    pub fn blocked_reason(&self) -> Option<String> {
        self.blocked().clone()
    }

    /// A batch committed: the database is up, nothing blocks loading.
    pub fn batch_committed(&self) {
        *self.blocked() = None;
        self.metrics.set_database_up(true);
        self.metrics.set_ready(true);
    }

    /// The database answered but refused some file's rows: it is up, and the file is narrowed
    /// down and set aside, so readiness is unchanged.
    pub fn data_refused(&self) {
        self.metrics.set_database_up(true);
    }

    /// A batch failed and will be retried; `reached_database` says whether the database
    /// answered at all, `blocked` why no retry fixes it, when none does.
    pub fn batch_failed(&self, reached_database: bool, blocked: Option<String>) {
        if let Some(reason) = blocked {
            *self.blocked() = Some(reason);
        }
        self.metrics.set_database_up(reached_database);
        self.metrics.set_ready(false);
    }

    /// The source cannot deliver work, and why (readiness is lost until [`Self::source_up`]).
    pub fn source_down(&self, reason: String) {
        *lock(&self.inner.source_down) = Some(reason);
        self.metrics.set_ready(false);
    }

    /// The source delivers work again.
    pub fn source_up(&self) {
        *lock(&self.inner.source_down) = None;
    }

    /// Why the source cannot deliver work, if it cannot.
    pub fn source_down_reason(&self) -> Option<String> {
        lock(&self.inner.source_down).clone()
    }

    /// Nothing is waiting to be loaded, so nothing can be failing to load.
    pub fn nothing_to_load(&self) {
        *self.blocked() = None;
    }

    /// What a readiness probe found: `database_answered` when it asked the database (it does not
    /// when the loader is stopped or blocked), and its verdict.
    pub fn probed(&self, database_answered: Option<bool>, ready: bool) {
        if let Some(up) = database_answered {
            self.metrics.set_database_up(up);
        }
        self.metrics.set_ready(ready);
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        lock(&self.inner.blocked)
    }
}

/// A reason's lock; a panic elsewhere while it was held leaves a string, still usable.
fn lock(reason: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    reason.lock().unwrap_or_else(|e| e.into_inner())
}
