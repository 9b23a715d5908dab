//! Where a Kafka message becomes a row: one event per message, as the contract's CSV line or as
//! a JSON object with the same six fields. Both go through the contract's one validation
//! (`event_contract::parse_record` behind `EventReader`), so a message is accepted or rejected
//! for exactly the reasons a file's line would be. A rejected message keeps its offset as its
//! `line` (`rejected_rows.line_number`); its ledger entry's `log_ranges` row names the topic
//! and partition.

use std::io::Cursor;

use csv::ByteRecord;
use event_contract::{
    parse_record, EventReader, ExtraColumnPolicy, HeaderLayout, RejectReason, Rejection,
    ValidationContext, COLUMNS, HEADER_LINE,
};

use crate::config::MessageFormat;
use crate::model::{LineEvent, RejectedRow};
use crate::source::reader::{storable_text, without_nul};

/// How much of an over-long message is kept as its raw text.
const TOO_LONG_PREFIX_BYTES: usize = 1024;

/// One message as the consumer received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its payload (an empty payload for a message without one).
    pub payload: Vec<u8>,
    /// When it was produced (or appended), ms since the epoch, if the broker says.
    pub produced_ms: Option<i64>,
}

/// What validating a batch of messages found, in offset order within each list.
#[derive(Debug, Default)]
pub struct ValidatedMessages {
    /// Valid events, each with its offset as `line`.
    pub events: Vec<LineEvent>,
    /// Rejected messages, each with its offset as `line`.
    pub rejections: Vec<RejectedRow>,
}

/// Validates `messages` in `format`; every message ends up in exactly one of the two lists.
///
/// # Errors
/// Only when the contract's reader fails on bytes in memory, which it does not: the caller
/// treats it as a read that broke off.
pub fn validate(
    messages: &[std::sync::Arc<Message>],
    format: MessageFormat,
    ctx: &ValidationContext,
    max_bytes: usize,
) -> std::io::Result<ValidatedMessages> {
    match format {
        MessageFormat::Csv => validate_csv(messages, ctx, max_bytes),
        MessageFormat::Json => Ok(validate_json(messages, ctx, max_bytes)),
    }
}

/// CSV messages are framed as the lines of one in-memory file behind the contract's header and
/// read by the contract's own reader (quotes, BOM, size cap and all). A message that is not one
/// line (empty, or holding a line break) is rejected before, so that line `n + 2` of that file
/// is always the `n`th framed message.
fn validate_csv(
    messages: &[std::sync::Arc<Message>],
    ctx: &ValidationContext,
    max_bytes: usize,
) -> std::io::Result<ValidatedMessages> {
    let mut out = ValidatedMessages::default();
    let mut framed: Vec<i64> = Vec::with_capacity(messages.len());
    let mut file = Vec::with_capacity(
        HEADER_LINE.len() + 1 + messages.iter().map(|m| m.payload.len() + 1).sum::<usize>(),
    );
    file.extend_from_slice(HEADER_LINE.as_bytes());
    file.push(b'\n');
    for message in messages {
        let line = strip_line_end(&message.payload);
        if line.is_empty() {
            out.rejections.push(rejected(
                message,
                line,
                Rejection::record(
                    RejectReason::WrongFieldCount,
                    "expected 6 fields, found an empty message".to_owned(),
                ),
            ));
        } else if line.len() <= max_bytes && line.iter().any(|b| matches!(b, b'\n' | b'\r')) {
            out.rejections.push(rejected(
                message,
                line,
                Rejection::record(
                    RejectReason::WrongFieldCount,
                    "a message holds one event on one line; this one holds a line break".to_owned(),
                ),
            ));
        } else {
            framed.push(message.offset);
            file.extend_from_slice(line);
            file.push(b'\n');
        }
    }
    let mut reader = EventReader::with_max_record_bytes(
        Cursor::new(file),
        *ctx,
        ExtraColumnPolicy::Ignore,
        max_bytes,
    )
    .map_err(|e| std::io::Error::other(format!("the framed messages' header: {e}")))?;
    while let Some(row) = reader
        .read_row()
        .map_err(|e| std::io::Error::other(format!("reading framed messages: {e}")))?
    {
        let offset = usize::try_from(row.line.saturating_sub(2))
            .ok()
            .and_then(|index| framed.get(index))
            .copied()
            .ok_or_else(|| {
                std::io::Error::other(format!("framed line {} matches no message", row.line))
            })?;
        match row.outcome {
            Ok(event) => out.events.push(LineEvent {
                event,
                line: offset_line(offset),
            }),
            Err(rejection) => out.rejections.push(RejectedRow {
                line: offset_line(offset),
                raw: storable_text(row.raw),
                reason: rejection.reason,
                message: without_nul(rejection.message),
            }),
        }
    }
    Ok(out)
}

/// A JSON message's six fields, in the contract's column order, validated as a CSV record with
/// the canonical header would be. Strings are taken as they are, numbers as they are written,
/// `null` and missing keys as empty fields; keys the contract does not know are ignored.
fn validate_json(
    messages: &[std::sync::Arc<Message>],
    ctx: &ValidationContext,
    max_bytes: usize,
) -> ValidatedMessages {
    let layout = HeaderLayout::canonical();
    let mut out = ValidatedMessages::default();
    for message in messages {
        let payload = strip_line_end(&message.payload);
        let outcome = if payload.len() > max_bytes {
            Err(Rejection::record(
                RejectReason::LineTooLong,
                format!(
                    "message of {} bytes exceeds the {max_bytes}-byte limit",
                    payload.len()
                ),
            ))
        } else {
            json_record(payload).and_then(|record| parse_record(&record, &layout, ctx))
        };
        match outcome {
            Ok(event) => out.events.push(LineEvent {
                event,
                line: offset_line(message.offset),
            }),
            Err(rejection) => out.rejections.push(rejected(message, payload, rejection)),
        }
    }
    out
}

/// The record a JSON object stands for, or why it stands for none. The object has exactly
/// the six contract fields, as a CSV record has exactly the header's: a missing or unknown key
/// is `wrong_field_count`, as a missing or extra field is. Strings are taken as they are,
/// numbers as they are written, `null` as an empty field.
fn json_record(payload: &[u8]) -> Result<ByteRecord, Rejection> {
    if let Err(e) = std::str::from_utf8(payload) {
        return Err(Rejection::record(
            RejectReason::NotUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        ));
    }
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload)
        .map_err(|e| {
            Rejection::record(
                RejectReason::WrongFieldCount,
                format!("not a JSON object with the contract's six fields ({e})"),
            )
        })?;
    if let Some(unknown) = object
        .keys()
        .find(|key| !COLUMNS.iter().any(|c| c.name() == key.as_str()))
    {
        return Err(Rejection::record(
            RejectReason::WrongFieldCount,
            format!("expected the contract's six fields, found also `{unknown}`"),
        ));
    }
    let mut record = ByteRecord::new();
    for column in COLUMNS {
        match object.get(column.name()) {
            None => {
                return Err(Rejection::record(
                    RejectReason::WrongFieldCount,
                    format!(
                        "expected the contract's six fields, `{}` is missing",
                        column.name()
                    ),
                ))
            }
            Some(serde_json::Value::Null) => record.push_field(b""),
            Some(serde_json::Value::String(text)) => record.push_field(text.as_bytes()),
            Some(serde_json::Value::Number(number)) => {
                record.push_field(number.to_string().as_bytes());
            }
            // A boolean, array or object: its JSON text, which the field's rule then refuses
            // with that field's own reason.
            Some(other) => record.push_field(other.to_string().as_bytes()),
        }
    }
    Ok(record)
}

/// The message without one trailing `\n` or `\r\n`, which a producer writing lines may add.
fn strip_line_end(payload: &[u8]) -> &[u8] {
    let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
    payload.strip_suffix(b"\r").unwrap_or(payload)
}

fn rejected(message: &Message, raw: &[u8], rejection: Rejection) -> RejectedRow {
    RejectedRow {
        line: offset_line(message.offset),
        raw: storable_text(&raw[..raw.len().min(TOO_LONG_PREFIX_BYTES)]),
        reason: rejection.reason,
        message: without_nul(rejection.message),
    }
}

/// A (never negative) offset as the rows' `line`.
fn offset_line(offset: i64) -> u64 {
    u64::try_from(offset).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const VALID: &str =
        "6f1c2a9e-2a64-4d8e-9a57-6f1c2a9e2a64,42,7,purchase,19.99,2026-01-01T00:00:00Z";

    fn messages(payloads: &[&[u8]]) -> Vec<Arc<Message>> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Arc::new(Message {
                    offset: 100 + i as i64,
                    payload: p.to_vec(),
                    produced_ms: None,
                })
            })
            .collect()
    }

    fn reasons(out: &ValidatedMessages) -> Vec<(u64, &'static str)> {
        out.rejections
            .iter()
            .map(|r| (r.line, r.reason.code()))
            .collect()
    }

    #[test]
    fn every_csv_message_is_one_event_or_one_rejection_at_its_offset() {
        let ctx = ValidationContext::now();
        let batch = messages(&[
            VALID.as_bytes(),
            b"",
            b"not,an,event",
            format!("{VALID}\n").as_bytes(),
            b"a\nb",
            b"\"unterminated,1,2,view,,2026-01-01T00:00:00Z",
            &[b'x'; 200],
        ]);
        let out = validate(&batch, MessageFormat::Csv, &ctx, 100).unwrap();
        let accepted: Vec<u64> = out.events.iter().map(|e| e.line).collect();
        assert_eq!(accepted, [100, 103]);
        let mut found = reasons(&out);
        found.sort_unstable();
        assert_eq!(
            found,
            [
                (101, "wrong_field_count"),
                (102, "wrong_field_count"),
                (104, "wrong_field_count"),
                (105, "unterminated_quote"),
                (106, "line_too_long"),
            ]
        );
    }

    #[test]
    fn json_messages_go_through_the_same_rules_with_the_same_reasons() {
        let ctx = ValidationContext::now();
        let good = r#"{"event_id":"6f1c2a9e-2a64-4d8e-9a57-6f1c2a9e2a64","user_id":42,
            "product_id":"7","event_type":"purchase","price":19.99,
            "event_timestamp":"2026-01-01T00:00:00Z"}"#;
        let no_price = good.replace("19.99", "null");
        let bad_id = good.replace("6f1c2a9e-2a64", "nope");
        let extra = good.replace("}", r#","extra":true}"#);
        let batch = messages(&[
            good.as_bytes(),
            no_price.as_bytes(),
            b"[1,2]",
            bad_id.as_bytes(),
            VALID.as_bytes(),
            extra.as_bytes(),
            b"{\"event_id\":\"\xff\"}",
            b"{\"event_id\":\"6f1c2a9e-2a64-4d8e-9a57-6f1c2a9e2a64\"}",
        ]);
        let out = validate(&batch, MessageFormat::Json, &ctx, 64 * 1024).unwrap();
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].line, 100);
        assert_eq!(out.events[0].event.user_id.get(), 42);
        assert_eq!(
            reasons(&out),
            [
                (101, "missing_field"),
                (102, "wrong_field_count"),
                (103, "bad_uuid"),
                (104, "wrong_field_count"),
                (105, "wrong_field_count"),
                (106, "not_utf8"),
                (107, "wrong_field_count"),
            ]
        );
    }
}
