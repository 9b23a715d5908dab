//! A row as a Kafka message: the key is the user id (decimal), the payload the row's fields as
//! the contract's CSV line or as a JSON object. Invalid rows are encoded from the very fields a
//! file would hold, so a broken row breaks the same way in every format.

use std::fmt::Write as _;

use anyhow::Context;
use event_contract::COLUMNS;

use crate::config::KafkaFormat;
use crate::rows::Row;

/// The name an extra field (`wrong_field_count`'s seventh) gets in a JSON message: the contract
/// has no name for it.
pub const JSON_EXTRA_FIELD: &str = "extra";

/// The row's fields as a file would hold them.
pub fn fields(row: &Row) -> Vec<Vec<u8>> {
    match row {
        Row::Valid { event, .. } | Row::Duplicate(event) => event
            .to_fields()
            .into_iter()
            .map(String::into_bytes)
            .collect(),
        Row::Invalid { fields, .. } => fields.clone(),
    }
}

/// The message key: the user id in decimal, so the default partitioner puts a user's events in
/// one partition, in the order they were produced.
pub fn key(row: &Row, out: &mut String) {
    out.clear();
    // Writing into a String cannot fail.
    let _ = write!(out, "{}", row.user_id());
}

/// Encodes `row` into `out` (cleared first).
///
/// # Errors
/// Only if the CSV writer fails on an in-memory buffer, which it does not.
pub fn encode(row: &Row, format: KafkaFormat, out: &mut Vec<u8>) -> anyhow::Result<()> {
    out.clear();
    let fields = fields(row);
    match format {
        KafkaFormat::Csv => csv_line(&fields, out),
        KafkaFormat::Json => {
            json_object(&fields, out);
            Ok(())
        }
    }
}

/// The fields as one CSV record, quoted exactly as the contract's writer quotes them, without a
/// line end: the message is the framing.
fn csv_line(fields: &[Vec<u8>], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut writer = csv::WriterBuilder::new()
        // Invalid rows may have the wrong number of fields, on purpose.
        .flexible(true)
        .buffer_capacity(256)
        .from_writer(std::mem::take(out));
    writer
        .write_record(fields)
        .context("cannot encode a CSV message")?;
    *out = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .context("cannot encode a CSV message")?;
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    Ok(())
}

/// The fields as a JSON object keyed by the contract's column names, every value a string as
/// the CSV has it. A missing field (a short `wrong_field_count` row) is an absent key, a
/// seventh field is [`JSON_EXTRA_FIELD`]. Bytes that are not UTF-8 (a `not_utf8` row) are
/// written as they are, so the message is not valid UTF-8 either: JSON has no way to carry them,
/// and a producer that emits them breaks its messages exactly so.
fn json_object(fields: &[Vec<u8>], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let name = COLUMNS.get(i).map_or(JSON_EXTRA_FIELD, |c| c.name());
        json_string(name.as_bytes(), out);
        out.push(b':');
        json_string(field, out);
    }
    out.push(b'}');
}

/// A JSON string literal of `bytes`: UTF-8 parts escaped by serde_json, other bytes raw.
fn json_string(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        if !valid.is_empty() {
            // Serializing a &str cannot fail; its quotes are dropped, the escapes kept.
            let quoted = serde_json::to_string(valid).unwrap_or_default();
            out.extend_from_slice(
                quoted
                    .strip_prefix('"')
                    .and_then(|q| q.strip_suffix('"'))
                    .unwrap_or_default()
                    .as_bytes(),
            );
        }
        out.extend_from_slice(chunk.invalid());
    }
    out.push(b'"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use event_contract::{parse_record, HeaderLayout, RejectReason, UserId, ValidationContext};

    const LINE: &str =
        "6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001,42,1001,purchase,19.99,2026-11-21T11:59:00Z";

    fn valid_row() -> Row {
        let record = csv::ByteRecord::from(LINE.split(',').collect::<Vec<_>>());
        let event = parse_record(
            &record,
            &HeaderLayout::canonical(),
            &ValidationContext::now(),
        )
        .unwrap();
        Row::Valid { event, late: false }
    }

    fn invalid_row(fields: &[&[u8]]) -> Row {
        Row::Invalid {
            reason: RejectReason::WrongFieldCount,
            fields: fields.iter().map(|f| f.to_vec()).collect(),
            user_id: UserId::new(42).unwrap(),
        }
    }

    #[test]
    fn a_csv_message_is_the_contract_line_without_header_or_line_end() {
        let mut out = Vec::new();
        encode(&valid_row(), KafkaFormat::Csv, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), LINE);
        let mut key_text = String::new();
        key(&valid_row(), &mut key_text);
        assert_eq!(key_text, "42");
    }

    #[test]
    fn a_json_message_has_the_six_header_fields_as_strings() {
        let mut out = Vec::new();
        encode(&valid_row(), KafkaFormat::Json, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "event_id": "6f1c1e36-7c49-4c0e-9b7e-0d5a4fb0c001",
                "user_id": "42",
                "product_id": "1001",
                "event_type": "purchase",
                "price": "19.99",
                "event_timestamp": "2026-11-21T11:59:00Z",
            })
        );
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys.len(), 6);
    }

    #[test]
    fn broken_rows_break_the_same_way_in_both_formats() {
        // A field needing quotes is quoted in CSV and escaped in JSON.
        let quoted = invalid_row(&[b"a,b", b"\"q\"", b"3", b"view", b"", b"t"]);
        let mut out = Vec::new();
        encode(&quoted, KafkaFormat::Csv, &mut out).unwrap();
        assert_eq!(out, b"\"a,b\",\"\"\"q\"\"\",3,view,,t");
        encode(&quoted, KafkaFormat::Json, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["event_id"], "a,b");
        assert_eq!(value["user_id"], "\"q\"");
        assert_eq!(value["price"], "");
        // Five fields: the sixth key is absent; seven: the seventh is `extra`.
        encode(&invalid_row(&[&b"1"[..]; 5]), KafkaFormat::Json, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(value.get("event_timestamp").is_none(), "{value}");
        encode(&invalid_row(&[&b"1"[..]; 7]), KafkaFormat::Json, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value[JSON_EXTRA_FIELD], "1");
        // Bytes that are not UTF-8 stay as they are.
        encode(
            &invalid_row(&[b"e", b"4\xff\xfe", b"1", b"view", b"", b"t"]),
            KafkaFormat::Json,
            &mut out,
        )
        .unwrap();
        assert!(out.windows(4).any(|w| w == b"4\xff\xfe\""), "{out:?}");
        assert!(std::str::from_utf8(&out).is_err());
    }
}
