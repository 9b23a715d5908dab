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
    let cases: [(&[u8], RejectReason); 19] = [
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
        (b"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,\"42,1001,purchase,19.99,2026-11-21T11:59:00Z", RejectReason::UnterminatedQuote),
        (b"\"6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,19.99,2026-11-21T11:59:00Z\n", RejectReason::UnterminatedQuote),
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
    let file = format!("{HEADER_LINE}\n{GOOD}\n\n\"a,1,1,view,,x\r\n{GOOD}\n");
    let lines: Vec<u64> = read_all(file.as_bytes())
        .unwrap()
        .iter()
        .map(|r| r.line)
        .collect();
    assert_eq!(lines, vec![2, 4, 5]);
}

#[test]
fn a_stray_quote_costs_its_own_line_and_no_other() {
    // A quoted field that would, in standard CSV, run on to the quote in line 5.
    let file = format!("{HEADER_LINE}\n{GOOD}\n\"a,1,1,view,,x\n{GOOD}\n\"quoted\",1\n");
    let rows = read_all(file.as_bytes()).unwrap();
    let outcomes: Vec<(u64, Option<RejectReason>)> = rows
        .iter()
        .map(|r| (r.line, r.outcome.as_ref().err().map(|e| e.reason)))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (2, None),
            (3, Some(RejectReason::UnterminatedQuote)),
            (4, None),
            (5, Some(RejectReason::WrongFieldCount)),
        ]
    );
}

#[test]
fn a_header_with_an_open_quote_fails_the_file() {
    let file = format!("\"{HEADER_LINE}\n{GOOD}\n\"\n");
    let err = read_all(file.as_bytes()).unwrap_err();
    assert_eq!(err.code(), "header_unterminated_quote");
}

/// A reader that hands out at most `chunk` bytes per read, so that line breaks, quotes and the
/// BOM fall on every possible read boundary.
struct Trickle<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
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
    fn one_stray_quote_rejects_exactly_its_own_row(
        events in proptest::collection::vec(arb_event(), 1..30),
        at_row in any::<prop::sample::Index>(),
        at_field in 0..6usize,
        line_end in prop::sample::select(vec!["\n", "\r\n", "\r"]),
        bom in any::<bool>(),
        chunk in 1..80usize,
    ) {
        let stray = at_row.index(events.len());
        let mut file = Vec::new();
        if bom {
            file.extend_from_slice("\u{feff}".as_bytes());
        }
        file.extend_from_slice(HEADER_LINE.as_bytes());
        for (index, event) in events.iter().enumerate() {
            file.extend_from_slice(line_end.as_bytes());
            let mut fields = event.to_fields();
            if index == stray {
                // A `"` opening the field: no valid field holds a quote, so nothing closes it.
                fields[at_field].insert(0, '"');
            }
            file.extend_from_slice(fields.join(",").as_bytes());
        }
        // Half the cases end the last line, half end the file inside the open quote.
        if chunk % 2 == 0 {
            file.extend_from_slice(line_end.as_bytes());
        }
        let rows: Vec<ParsedRow> = EventReader::new(
            Trickle { bytes: &file, chunk },
            ValidationContext::at(now()),
            ExtraColumnPolicy::Ignore,
        )
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
        prop_assert_eq!(rows.len(), events.len());
        for (index, (row, event)) in rows.iter().zip(&events).enumerate() {
            prop_assert_eq!(row.line, index as u64 + 2);
            if index == stray {
                let reason = row.outcome.as_ref().err().map(|e| e.reason);
                prop_assert_eq!(reason, Some(RejectReason::UnterminatedQuote));
            } else {
                prop_assert_eq!(row.outcome.as_ref().ok(), Some(event));
            }
        }
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
