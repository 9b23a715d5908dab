//! Holding a target rate: every row has a due time on an absolute schedule, so a slow moment is
//! caught up afterwards instead of drifting the average.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Only sleep when this far ahead of schedule: sleeping per row at 50,000 rows/s would cost more
/// in syscalls than it saves.
const MIN_SLEEP: Duration = Duration::from_millis(2);
/// Longest single sleep, so a shutdown request is noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// The schedule: row `i` is due at `start + i / rate`.
pub struct Pacer {
    start: Instant,
    nanos_per_row: f64,
}

impl Pacer {
    /// A schedule starting now.
    pub fn new(rate: f64) -> Self {
        Pacer {
            start: Instant::now(),
            nanos_per_row: 1e9 / rate,
        }
    }

    /// Blocks until row `index` is due. Returns `false` if `cancel` fired first.
    pub fn wait_for(&self, index: u64, cancel: &CancellationToken) -> bool {
        let due = self.start + Duration::from_nanos((index as f64 * self.nanos_per_row) as u64);
        loop {
            if cancel.is_cancelled() {
                return false;
            }
            let ahead = due.saturating_duration_since(Instant::now());
            if ahead < MIN_SLEEP {
                return true;
            }
            std::thread::sleep(ahead.min(MAX_SLEEP));
        }
    }

    /// Time since the schedule started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}
