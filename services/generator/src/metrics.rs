//! What the generator reports about its work, in a Prometheus registry it owns.
//!
//! Counters move once per **published** file, from that file's [`RowCounts`], never per row: the
//! write loop is hot, and a reader can only ever see rows of published files, so the counters
//! count exactly what downstream can see (a file discarded at shutdown is never counted).
//!
//! Metric names follow `generator_<what>_<unit>`, counters end in `_total`, and label values come
//! from bounded sets (row kinds, reason codes), never from file names. The process collector's
//! `process_*` metrics (CPU, memory, descriptors, start time) are registered here too.

use event_contract::RejectReason;
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use service_support::{counter_vec, register, register_process_metrics};

use crate::rows::is_injected;
use crate::summary::RowCounts;

/// `kind` label values of `generator_events_total`.
pub const EVENT_KINDS: [&str; 3] = [KIND_VALID, KIND_DUPLICATE, KIND_INVALID];
/// New valid events (late ones included).
const KIND_VALID: &str = "valid";
/// Exact repeats of an earlier event.
const KIND_DUPLICATE: &str = "duplicate";
/// Rows that break the contract.
const KIND_INVALID: &str = "invalid";

/// The generator's metrics. Cloning is cheap: every metric is shared, so a clone handed to the
/// write loop's thread updates the same series the HTTP server renders.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    invalid_rows: IntCounterVec,
    late_events: IntCounter,
    files: IntCounter,
    bytes: IntCounter,
    target_rate: Gauge,
}

impl Metrics {
    /// Creates and registers every metric, all series at 0 and `generator_build_info` at 1.
    ///
    /// # Errors
    /// Only on a programming error (a duplicate or malformed metric name).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let build_info = IntGauge::with_opts(
            Opts::new("generator_build_info", "Build information; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build_info.set(1);
        register(&registry, build_info)?;
        register_process_metrics(&registry)?;
        let reasons: Vec<&str> = RejectReason::ALL
            .into_iter()
            .filter(|r| is_injected(*r))
            .map(RejectReason::code)
            .collect();
        Ok(Metrics {
            events: counter_vec(
                &registry,
                "generator_events_total",
                "Rows in published files, by kind (valid, duplicate, invalid).",
                "kind",
                &EVENT_KINDS,
            )?,
            invalid_rows: counter_vec(
                &registry,
                "generator_invalid_rows_total",
                "Invalid rows in published files, by injected reason code.",
                "reason",
                &reasons,
            )?,
            late_events: register(
                &registry,
                IntCounter::new(
                    "generator_late_events_total",
                    "Valid events in published files stamped late on purpose.",
                )?,
            )?,
            files: register(
                &registry,
                IntCounter::new("generator_files_total", "Files published.")?,
            )?,
            bytes: register(
                &registry,
                IntCounter::new(
                    "generator_bytes_total",
                    "Bytes of published files, headers included.",
                )?,
            )?,
            target_rate: register(
                &registry,
                Gauge::new(
                    "generator_target_rate_events_per_second",
                    "The configured target rate in rows per second.",
                )?,
            )?,
            registry,
        })
    }

    /// Records the configured target rate.
    pub fn set_target_rate(&self, events_per_second: f64) {
        self.target_rate.set(events_per_second);
    }

    /// Counts one published file of `bytes` bytes holding `counts` rows.
    pub fn file_published(&self, counts: &RowCounts, bytes: u64) {
        self.files.inc();
        self.bytes.inc_by(bytes);
        for (kind, n) in [
            (KIND_VALID, counts.valid),
            (KIND_DUPLICATE, counts.duplicates),
            (KIND_INVALID, counts.invalid),
        ] {
            self.events.with_label_values(&[kind]).inc_by(n);
        }
        self.late_events.inc_by(counts.late);
        for (reason, n) in &counts.invalid_by_reason {
            self.invalid_rows.with_label_values(&[reason]).inc_by(*n);
        }
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding gathered families into a Vec cannot fail but for a malformed family, which
        // registration already rules out; an empty page is the harmless fallback.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            buffer.clear();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn every_series_exists_at_zero_before_the_first_file() {
        let text = Metrics::new().unwrap().render();
        for kind in EVENT_KINDS {
            assert_eq!(
                value(&text, &format!("generator_events_total{{kind=\"{kind}\"}}")),
                0.0
            );
        }
        assert_eq!(
            value(&text, "generator_invalid_rows_total{reason=\"bad_uuid\"}"),
            0.0
        );
        assert!(
            !text.contains("reason=\"line_too_long\""),
            "never injected, so not a series: {text}"
        );
        assert_eq!(value(&text, "generator_files_total"), 0.0);
        assert!(
            value(&text, "process_start_time_seconds") > 0.0,
            "the process collector reports this process: {text}"
        );
        assert_eq!(
            value(
                &text,
                &format!(
                    "generator_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            1.0
        );
    }

    #[test]
    fn a_published_file_moves_every_counter_by_its_counts() {
        // Arrange
        let metrics = Metrics::new().unwrap();
        metrics.set_target_rate(250.0);
        let mut counts = RowCounts {
            rows: 10,
            valid: 6,
            late: 2,
            duplicates: 1,
            invalid: 3,
            ..RowCounts::default()
        };
        counts.invalid_by_reason.insert("bad_uuid", 2);
        counts.invalid_by_reason.insert("bad_price", 1);
        // Act
        metrics.file_published(&counts, 1_234);
        metrics.file_published(&counts, 1_000);
        // Assert
        let text = metrics.render();
        assert_eq!(value(&text, "generator_files_total"), 2.0);
        assert_eq!(value(&text, "generator_bytes_total"), 2_234.0);
        assert_eq!(value(&text, "generator_events_total{kind=\"valid\"}"), 12.0);
        assert_eq!(
            value(&text, "generator_events_total{kind=\"duplicate\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "generator_events_total{kind=\"invalid\"}"),
            6.0
        );
        assert_eq!(value(&text, "generator_late_events_total"), 4.0);
        assert_eq!(
            value(&text, "generator_invalid_rows_total{reason=\"bad_uuid\"}"),
            4.0
        );
        assert_eq!(
            value(&text, "generator_target_rate_events_per_second"),
            250.0
        );
    }
}
