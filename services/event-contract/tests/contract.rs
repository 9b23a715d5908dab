//! The contract end to end: a concrete bad line for every reason code, and property tests that
//! valid events round-trip and that no input panics the reader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, TimeZone, Utc};
use event_contract::{
    Event, EventId, EventReader, EventTimestamp, EventType, EventWriter, ExtraColumnPolicy,
    ParsedRow, Price, ProductId, ReadError, RejectReason, UserId, ValidationContext, HEADER_LINE,
};
use proptest::prelude::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
}

fn read_all(input: &[u8]) -> Result<Vec<ParsedRow>, ReadError> {
    EventReader::new(
        input,
        ValidationContext::at(now()),
        ExtraColumnPolicy::Ignore,
    )?
    .collect()
}

fn reject_reason_of(line: &[u8]) -> Option<RejectReason> {
    let mut file = format!("{HEADER_LINE}\n").into_bytes();
    file.extend_from_slice(line);
    let rows = read_all(&file).unwrap();
    assert_eq!(rows.len(), 1);
    rows[0].outcome.as_ref().err().map(|r| r.reason)
}

const GOOD: &str =
    "6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,19.99,2026-11-21T11:59:00Z";

#[test]
fn the_reference_line_is_valid() {
    assert_eq!(reject_reason_of(GOOD.as_bytes()), None);
    let view_without_price =
        "6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,view,,2026-11-21T11:59:00+02:00";
    assert_eq!(reject_reason_of(view_without_price.as_bytes()), None);
}

#[test]
fn every_reason_code_has_a_concrete_bad_line() {
    let too_long = format!(
        "6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,{},1001,view,,2026-11-21T11:59:00Z",
        "9".repeat(70_000)
    );
    let cases: [(&[u8], RejectReason); 17] = [
        (too_long.as_bytes(), RejectReason::LineTooLong),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,19.99", RejectReason::WrongFieldCount),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,19.99,2026-11-21T11:59:00Z,x", RejectReason::WrongFieldCount),
        (b",42,1001,purchase,19.99,2026-11-21T11:59:00Z", RejectReason::MissingField),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,,2026-11-21T11:59:00Z", RejectReason::MissingField),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,19.99,", RejectReason::MissingField),
        (b"not-a-uuid,42,1001,purchase,19.99,2026-11-21T11:59:00Z", RejectReason::BadUuid),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,-42,1001,purchase,19.99,2026-11-21T11:59:00Z", RejectReason::BadInteger),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,0,purchase,19.99,2026-11-21T11:59:00Z", RejectReason::BadInteger),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,checkout,19.99,2026-11-21T11:59:00Z", RejectReason::UnknownEventType),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,19.999,2026-11-21T11:59:00Z", RejectReason::BadPrice),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,-5.00,2026-11-21T11:59:00Z", RejectReason::BadPrice),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,1000000.00,2026-11-21T11:59:00Z", RejectReason::BadPrice),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,19.99,2026-11-21 11:59:00", RejectReason::BadTimestamp),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,19.99,2026-11-21T13:00:00Z", RejectReason::FutureTimestamp),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,vi\xffew,19.99,2026-11-21T11:59:00Z", RejectReason::NotUtf8),
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,4\xc32,1001,view,,2026-11-21T11:59:00Z", RejectReason::NotUtf8),
    ];
    for (line, expected) in cases {
        assert_eq!(
            reject_reason_of(line),
            Some(expected),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    let covered: std::collections::BTreeSet<_> = cases.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        covered.len(),
        RejectReason::ALL.len(),
        "a reason code has no test line"
    );
}

#[test]
fn messages_name_the_field_and_the_value() {
    let mut file = format!("{HEADER_LINE}\n").into_bytes();
    file.extend_from_slice(
        b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,abc,1001,view,,2026-11-21T11:59:00Z\n",
    );
    let rows = read_all(&file).unwrap();
    let rejection = rows[0].outcome.clone().unwrap_err();
    assert!(
        rejection.message.contains("user_id"),
        "{}",
        rejection.message
    );
    assert!(
        rejection.message.contains("\"abc\""),
        "{}",
        rejection.message
    );
    assert_eq!(rows[0].line, 2);
}

#[test]
fn quoted_fields_crlf_and_bom_are_read() {
    let file = format!(
        "\u{feff}{HEADER_LINE}\r\n\"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001\",42,1001,\"purchase\",\"19.99\",2026-11-21T11:59:00Z\r\n"
    );
    let rows = read_all(file.as_bytes()).unwrap();
    assert!(rows[0].outcome.is_ok(), "{:?}", rows[0]);
}

#[test]
fn line_numbers_count_physical_lines() {
    let file = format!("{HEADER_LINE}\n{GOOD}\n\"a\nb\",1,1,view,,x\n{GOOD}\n");
    let lines: Vec<u64> = read_all(file.as_bytes())
        .unwrap()
        .iter()
        .map(|r| r.line)
        .collect();
    assert_eq!(lines, vec![2, 3, 5]);
}

#[test]
fn files_that_are_not_event_csv_fail_as_a_whole() {
    assert!(matches!(read_all(b""), Err(ReadError::Empty)));
    assert!(matches!(
        read_all(b"a,b,c\n1,2,3\n"),
        Err(ReadError::Header(_))
    ));
}

fn arb_event() -> impl Strategy<Value = Event> {
    let latest = now().timestamp_micros();
    (
        any::<u128>(),
        1..=i64::MAX,
        1..=i64::MAX,
        0..4usize,
        proptest::option::of(0..100_000_000i64),
        0..=latest,
    )
        .prop_map(|(id, user, product, kind, cents, micros)| {
            let event_type = EventType::ALL[kind];
            let price = match (cents, event_type) {
                (None, EventType::View) => None,
                (cents, _) => Price::from_cents(cents.unwrap_or(0)),
            };
            Event {
                event_id: EventId::from(uuid::Uuid::from_u128(id)),
                user_id: UserId::new(user).unwrap(),
                product_id: ProductId::new(product).unwrap(),
                event_type,
                price,
                event_timestamp: EventTimestamp::from_utc(
                    DateTime::from_timestamp_micros(micros).unwrap(),
                ),
            }
        })
}

proptest! {
    #[test]
    fn valid_events_survive_write_then_parse(events in proptest::collection::vec(arb_event(), 0..20)) {
        let mut writer = EventWriter::new(Vec::new()).unwrap();
        for event in &events {
            writer.write_event(event).unwrap();
        }
        let bytes = writer.into_inner().unwrap();
        let parsed: Vec<Event> = read_all(&bytes)
            .unwrap()
            .into_iter()
            .map(|row| row.outcome.unwrap())
            .collect();
        prop_assert_eq!(parsed, events);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_reader(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = read_all(&bytes);
    }

    #[test]
    fn arbitrary_records_after_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let mut file = format!("{HEADER_LINE}\n").into_bytes();
        file.extend_from_slice(&body);
        if let Ok(rows) = read_all(&file) {
            for row in rows {
                prop_assert!(row.line >= 2);
            }
        }
    }
}
