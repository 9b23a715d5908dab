//! Fault injection: turns a valid event into a row that breaks the contract in exactly one way,
//! so the ingestor must reject it with that reason code and no other.

use chrono::Duration;
use event_contract::{Column, Event, RejectReason, COLUMNS};
use rand::seq::IndexedRandom;
use rand::Rng;

/// How far ahead a `future_timestamp` row is stamped: a century, so the row is in the future for
/// any ingest clock even when `--start-time` lies years in the past.
const FUTURE_OFFSET_DAYS: i64 = 36_525;

/// A copy of `event`'s fields broken so that parsing fails with `reason`.
pub fn corrupt(event: &Event, reason: RejectReason, rng: &mut impl Rng) -> Vec<Vec<u8>> {
    let mut fields: Vec<Vec<u8>> = event.to_fields().map(String::into_bytes).into();
    let at = |c: Column| c as usize;
    match reason {
        RejectReason::WrongFieldCount => {
            if rng.random_bool(0.5) {
                fields.pop();
            } else {
                fields.push(b"extra".to_vec());
            }
        }
        RejectReason::MissingField => {
            let column = *COLUMNS.choose(rng).unwrap_or(&Column::UserId);
            if column == Column::Price {
                // An empty price is only missing on a type that requires one.
                fields[at(Column::EventType)] = b"purchase".to_vec();
            }
            fields[at(column)].clear();
        }
        RejectReason::BadUuid => {
            let id = &fields[at(Column::EventId)];
            fields[at(Column::EventId)] = match rng.random_range(0..3) {
                0 => format!("evt-{}", rng.random::<u32>()).into_bytes(),
                1 => id[..id.len() - 1].to_vec(),
                _ => b"zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz".to_vec(),
            };
        }
        RejectReason::BadInteger => {
            let column = if rng.random_bool(0.5) {
                Column::UserId
            } else {
                Column::ProductId
            };
            fields[at(column)] = pick(rng, &["0", "-17", "12ab", "99999999999999999999", "4.5"]);
        }
        RejectReason::UnknownEventType => {
            fields[at(Column::EventType)] =
                pick(rng, &["checkout", "wishlist", "VIEW", "add-to-cart"]);
        }
        RejectReason::BadPrice => {
            fields[at(Column::Price)] = pick(
                rng,
                &["-4.99", "19.999", "1e3", "1000000.00", "12,50", "free"],
            );
        }
        RejectReason::BadTimestamp => {
            fields[at(Column::EventTimestamp)] = pick(
                rng,
                &[
                    "2026-11-21 11:59:00",
                    "1732190340",
                    "2026-02-30T10:00:00Z",
                    "yesterday",
                ],
            );
        }
        RejectReason::FutureTimestamp => {
            let future = *event.event_timestamp.as_utc() + Duration::days(FUTURE_OFFSET_DAYS);
            fields[at(Column::EventTimestamp)] = future.to_rfc3339().into_bytes();
        }
        RejectReason::NotUtf8 => {
            let column = *[Column::UserId, Column::EventType, Column::EventTimestamp]
                .choose(rng)
                .unwrap_or(&Column::EventType);
            fields[at(column)].extend_from_slice(b"\xff\xfe");
        }
        RejectReason::LineTooLong => {
            // Not injected (see `rows::is_injected`); a long field would make it one.
            fields[at(Column::UserId)] = vec![b'9'; event_contract::DEFAULT_MAX_RECORD_BYTES + 1];
        }
        RejectReason::UnterminatedQuote => {
            // Not injected (see `rows::is_injected`): the writer quotes any field that needs it,
            // so no field value can leave a quote open; the fields are returned unchanged.
        }
    }
    fields
}

fn pick(rng: &mut impl Rng, choices: &[&str]) -> Vec<u8> {
    choices
        .choose(rng)
        .copied()
        .unwrap_or_default()
        .as_bytes()
        .to_vec()
}
