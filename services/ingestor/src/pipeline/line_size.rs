//! How many bytes a line takes, learned from what this process has loaded, so that a loop takes
//! only the units its batch is expected to load.
//!
//! Why: a batch stops at `batch_max_rows`, but units are opened (read and hashed in full) before
//! BEGIN, and a unit's line count is known only once it has been read. Taking every ready unit
//! up to `batch_max_files` read a backlog's files several times over (32 opened, 5 loaded, the
//! rest released and opened again by the next batch), and the loop's connection sat idle
//! meanwhile. The estimate only chooses how many units a batch takes; what is loaded, and how
//! it is counted, never depends on it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes per line assumed until something has been loaded: less than any event line (an event
/// id alone is 36 bytes), so the first batches take too few units rather than too many.
const ASSUMED_BYTES_PER_LINE: u64 = 64;

/// Loaded bytes and lines so far, shared by the loops of one process.
#[derive(Debug, Default)]
pub struct LineSize {
    bytes: AtomicU64,
    lines: AtomicU64,
}

impl LineSize {
    /// Learns from a loaded unit of `bytes` bytes holding `lines` lines.
    pub fn learn(&self, bytes: u64, lines: u64) {
        if lines > 0 {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.lines.fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// How many of the units of `sizes` (bytes, in batch order) a batch stopping at `max_lines`
    /// is expected to load: every unit whose predecessors are expected to hold fewer than
    /// `max_lines` lines (the batch stops only after the unit that reaches the limit), and
    /// always the first (none of none).
    pub fn expected_units(
        &self,
        sizes: impl ExactSizeIterator<Item = u64>,
        max_lines: u64,
    ) -> usize {
        let (bytes, lines) = (
            self.bytes.load(Ordering::Relaxed),
            self.lines.load(Ordering::Relaxed),
        );
        let bytes_per_line = bytes
            .checked_div(lines)
            .unwrap_or(ASSUMED_BYTES_PER_LINE)
            .max(1);
        let units = sizes.len();
        let mut expected = 0u64;
        let taken = sizes
            .take_while(|size| {
                let before = expected;
                expected = expected.saturating_add(size / bytes_per_line);
                before < max_lines
            })
            .count();
        taken.max(1).min(units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(size: &LineSize, sizes: &[u64], max_lines: u64) -> usize {
        size.expected_units(sizes.iter().copied(), max_lines)
    }

    #[test]
    fn before_anything_is_loaded_lines_are_assumed_short() {
        let size = LineSize::default();
        // 6,400 bytes = 100 assumed lines each: 3 units reach 250 lines.
        assert_eq!(expected(&size, &[6_400; 10], 250), 3);
    }

    #[test]
    fn the_learned_size_decides_how_many_units_are_taken() {
        let size = LineSize::default();
        size.learn(1_000_000, 10_000);
        size.learn(0, 0);
        // 100 bytes a line: 1 MB units hold 10,000 lines each; 50,000 are reached by the fifth.
        assert_eq!(expected(&size, &[1_000_000; 32], 50_000), 5);
        assert_eq!(expected(&size, &[1_000_000; 32], 50_001), 6);
    }

    #[test]
    fn the_first_unit_is_always_taken_and_none_of_none() {
        let size = LineSize::default();
        assert_eq!(expected(&size, &[u64::MAX; 3], 1), 1);
        assert_eq!(expected(&size, &[], 1), 0);
        assert_eq!(expected(&size, &[0; 4], 1), 4);
    }
}
