//! The row stream: realistic events from the session model, with faults mixed in at the
//! configured ratios. Everything is drawn from one seeded RNG, so a seed and a start time fix
//! every byte of the output.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use event_contract::{Event, EventId, EventTimestamp, RejectReason, UserId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::catalog::Catalog;
use crate::config::Settings;
use crate::faults;
use crate::sessions::Sessions;

/// How many recent valid events a duplicate may repeat. Bounded so memory stays flat however
/// long the generator runs; 8,192 events span several files at the default file size.
const DUPLICATE_WINDOW: usize = 8_192;
/// Late events are stamped up to this many seconds in the past.
const MAX_LATENESS_SECONDS: i64 = 30 * 60;
/// Whether the generator injects rows with this reason: every contract violation a producer can
/// make in a normal row. `line_too_long` is left out: its rows would be 64 KiB each and drown
/// the output. `unterminated_quote` is left out too: the writer quotes every field that needs it,
/// and a stray quote is a fault of the file's framing, which the ingestor's tests write by hand.
pub fn is_injected(reason: RejectReason) -> bool {
    !matches!(
        reason,
        RejectReason::LineTooLong | RejectReason::UnterminatedQuote
    )
}

/// Late events are stamped at least this many seconds in the past.
const MIN_LATENESS_SECONDS: i64 = 60;

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A new, valid event; `late` when stamped minutes in the past.
    Valid {
        /// The event.
        event: Event,
        /// Whether it was stamped late on purpose.
        late: bool,
    },
    /// An exact repeat of an earlier valid event (at-least-once delivery).
    Duplicate(Event),
    /// A row that breaks the contract with the given reason.
    Invalid {
        /// The reason the ingestor must report.
        reason: RejectReason,
        /// The raw fields to write.
        fields: Vec<Vec<u8>>,
        /// The user of the event the row was broken from: a Kafka message's key, so that even
        /// a broken row lands in its user's partition, in order.
        user_id: UserId,
    },
}

impl Row {
    /// The user the row belongs to (for an invalid row, the user of the event it was made
    /// from, whatever its `user_id` field now holds).
    pub fn user_id(&self) -> UserId {
        match self {
            Row::Valid { event, .. } | Row::Duplicate(event) => event.user_id,
            Row::Invalid { user_id, .. } => *user_id,
        }
    }
}

/// Produces the rows, in order.
pub struct RowSource {
    rng: ChaCha8Rng,
    catalog: Catalog,
    injected: Vec<RejectReason>,
    sessions: Sessions,
    recent: VecDeque<Event>,
    start: DateTime<Utc>,
    micros_per_event: f64,
    invalid_ratio: f64,
    duplicate_ratio: f64,
    late_ratio: f64,
}

impl RowSource {
    /// A source whose first event is stamped `start` and whose clock advances by `1 / rate`.
    pub fn new(settings: &Settings, seed: u64, start: DateTime<Utc>) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let catalog = Catalog::new(settings.products, settings.users, &mut rng);
        let sessions = Sessions::new(settings.sessions, &catalog, &mut rng);
        RowSource {
            rng,
            catalog,
            injected: RejectReason::ALL
                .into_iter()
                .filter(|r| is_injected(*r))
                .collect(),
            sessions,
            recent: VecDeque::with_capacity(DUPLICATE_WINDOW),
            start,
            micros_per_event: 1e6 / settings.rate,
            invalid_ratio: settings.invalid_ratio,
            duplicate_ratio: settings.duplicate_ratio,
            late_ratio: settings.late_ratio,
        }
    }

    /// The row with global index `index` (its timestamp is `start + index / rate`).
    pub fn next_row(&mut self, index: u64) -> Row {
        let draw: f64 = self.rng.random();
        if draw < self.invalid_ratio {
            let reason = self.injected[self.rng.random_range(0..self.injected.len())];
            let event = self.new_event(index, false);
            return Row::Invalid {
                reason,
                fields: faults::corrupt(&event, reason, &mut self.rng),
                user_id: event.user_id,
            };
        }
        if draw < self.invalid_ratio + self.duplicate_ratio && !self.recent.is_empty() {
            let earlier = self.rng.random_range(0..self.recent.len());
            return Row::Duplicate(self.recent[earlier].clone());
        }
        let late = self.late_ratio > 0.0 && self.rng.random_bool(self.late_ratio);
        let event = self.new_event(index, late);
        if self.recent.len() == DUPLICATE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(event.clone());
        Row::Valid { event, late }
    }

    fn new_event(&mut self, index: u64, late: bool) -> Event {
        let action = self.sessions.next_action(&self.catalog, &mut self.rng);
        let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        let mut at = self.clock(index);
        if late {
            at -= Duration::seconds(
                self.rng
                    .random_range(MIN_LATENESS_SECONDS..=MAX_LATENESS_SECONDS),
            );
        }
        Event {
            event_id: EventId::from(id),
            user_id: action.user_id,
            product_id: action.product_id,
            event_type: action.event_type,
            price: action.price,
            event_timestamp: EventTimestamp::from_utc(at),
        }
    }

    fn clock(&self, index: u64) -> DateTime<Utc> {
        // f64 holds integers exactly up to 2^53 events: centuries at any realistic rate.
        let offset = (index as f64 * self.micros_per_event).round() as i64;
        self.start + Duration::microseconds(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawSettings;
    use event_contract::{parse_record, HeaderLayout, ValidationContext};

    fn settings(invalid: f64, duplicate: f64, late: f64) -> Settings {
        RawSettings {
            invalid_ratio: invalid,
            duplicate_ratio: duplicate,
            late_ratio: late,
            ..RawSettings::default()
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn every_invalid_row_is_rejected_with_its_intended_reason() {
        let start = Utc::now();
        let mut source = RowSource::new(&settings(1.0, 0.0, 0.0), 11, start);
        let ctx = ValidationContext::now();
        let mut seen = std::collections::BTreeSet::new();
        for index in 0..5_000 {
            let Row::Invalid { reason, fields, .. } = source.next_row(index) else {
                panic!("invalid_ratio 1.0 must give only invalid rows");
            };
            let record = csv::ByteRecord::from(fields);
            let got = parse_record(&record, &HeaderLayout::canonical(), &ctx).unwrap_err();
            assert_eq!(got.reason, reason, "{}", got.message);
            seen.insert(reason);
        }
        assert_eq!(
            seen.len(),
            RejectReason::ALL
                .iter()
                .filter(|r| is_injected(**r))
                .count(),
            "every reason is injected"
        );
    }

    #[test]
    fn duplicates_repeat_earlier_events_and_late_events_are_late() {
        let start = Utc::now();
        let mut source = RowSource::new(&settings(0.0, 0.2, 0.1), 5, start);
        let mut ids = std::collections::HashSet::new();
        let (mut duplicates, mut late) = (0, 0);
        for index in 0..10_000 {
            match source.next_row(index) {
                Row::Duplicate(event) => {
                    assert!(ids.contains(&event.event_id));
                    duplicates += 1;
                }
                Row::Valid {
                    event,
                    late: is_late,
                } => {
                    assert!(ids.insert(event.event_id), "new events have new ids");
                    if is_late {
                        late += 1;
                        assert!(
                            *event.event_timestamp.as_utc()
                                <= source.clock(index) - Duration::seconds(60)
                        );
                    }
                }
                Row::Invalid { .. } => panic!("no invalid rows were asked for"),
            }
        }
        assert!((1_700..2_300).contains(&duplicates), "{duplicates}");
        assert!((600..1_000).contains(&late), "{late}");
    }

    #[test]
    fn the_same_seed_gives_the_same_rows() {
        let start = Utc::now();
        let rows = |seed| {
            let mut source = RowSource::new(&settings(0.1, 0.1, 0.1), seed, start);
            (0..2_000).map(|i| source.next_row(i)).collect::<Vec<_>>()
        };
        assert_eq!(rows(42), rows(42));
        assert_ne!(rows(42), rows(43));
    }
}
