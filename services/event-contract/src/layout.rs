//! The CSV layout: the header a file must have, and turning one record into an [`Event`].
//!
//! Columns are matched by name, not position, so a producer may order them differently (the
//! names themselves are [`crate::column`]'s).

use csv::ByteRecord;

use crate::column::{Column, COLUMNS, HEADER_LINE};
use crate::domain::{
    Event, EventId, EventTimestamp, EventType, Price, ProductId, UserId, ValidationContext,
};
use crate::records::Fields;
use crate::reject::{RejectReason, Rejection};

/// What to do with header columns the contract does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtraColumnPolicy {
    /// Ignore them (their values are not validated).
    #[default]
    Ignore,
    /// Fail the whole file.
    Fail,
}

/// Why a header line cannot be read as the contract's header. This fails a whole file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The header names a column that is not valid UTF-8.
    #[error("header is not valid UTF-8")]
    NotUtf8,
    /// A contract column is absent.
    #[error("header lacks column `{0}` (expected {HEADER_LINE})")]
    MissingColumn(Column),
    /// A column name appears twice.
    #[error("header names column `{0}` twice")]
    DuplicateColumn(String),
    /// An unknown column, under [`ExtraColumnPolicy::Fail`].
    #[error("header has unknown column `{0}` and extra columns are not allowed")]
    UnknownColumn(String),
    /// The header line is longer than the reader's byte cap.
    #[error("header line is longer than {0} bytes")]
    TooLong(usize),
    /// The header opens a quoted field that is still open at the end of its line.
    #[error("header line has a quoted field that is not closed before the line ends")]
    UnterminatedQuote,
}

impl HeaderError {
    /// A stable machine-readable code, for ledgers and metric labels.
    pub const fn code(&self) -> &'static str {
        match self {
            HeaderError::NotUtf8 => "header_not_utf8",
            HeaderError::MissingColumn(_) => "header_missing_column",
            HeaderError::DuplicateColumn(_) => "header_duplicate_column",
            HeaderError::UnknownColumn(_) => "header_unknown_column",
            HeaderError::TooLong(_) => "header_too_long",
            HeaderError::UnterminatedQuote => "header_unterminated_quote",
        }
    }
}

/// Where each contract column sits in a file's records, learned from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderLayout {
    /// Position of each contract column, indexed by [`Column`] order.
    positions: [usize; 6],
    /// How many fields every record of the file must have.
    width: usize,
}

/// The UTF-8 byte-order mark some spreadsheet tools put at the start of a file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl HeaderLayout {
    /// The layout of the canonical header.
    pub fn canonical() -> Self {
        HeaderLayout {
            positions: [0, 1, 2, 3, 4, 5],
            width: COLUMNS.len(),
        }
    }

    /// Matches a header record's column names (exact, after removing a leading UTF-8 BOM) to the
    /// contract's columns.
    ///
    /// # Errors
    /// A [`HeaderError`] when a column is missing, repeated, not UTF-8, or unknown under
    /// [`ExtraColumnPolicy::Fail`].
    pub fn from_header<'h>(
        header: impl IntoIterator<Item = &'h [u8]>,
        policy: ExtraColumnPolicy,
    ) -> Result<Self, HeaderError> {
        let mut positions: [Option<usize>; 6] = [None; 6];
        let mut seen: Vec<&str> = Vec::new();
        for (index, raw) in header.into_iter().enumerate() {
            let raw = if index == 0 {
                raw.strip_prefix(UTF8_BOM).unwrap_or(raw)
            } else {
                raw
            };
            let name = std::str::from_utf8(raw).map_err(|_| HeaderError::NotUtf8)?;
            if seen.contains(&name) {
                return Err(HeaderError::DuplicateColumn(name.to_owned()));
            }
            seen.push(name);
            match COLUMNS.iter().find(|c| c.name() == name) {
                Some(column) => positions[column.index()] = Some(index),
                None if policy == ExtraColumnPolicy::Fail => {
                    return Err(HeaderError::UnknownColumn(name.to_owned()))
                }
                None => {}
            }
        }
        let mut resolved = [0; 6];
        for column in COLUMNS {
            resolved[column.index()] =
                positions[column.index()].ok_or(HeaderError::MissingColumn(column))?;
        }
        Ok(HeaderLayout {
            positions: resolved,
            width: seen.len(),
        })
    }

    /// How many fields a record must have.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The contract's fields as text when the whole record is valid UTF-8 and each field is
    /// too: one validation of the record's bytes instead of six of short fields (each paying
    /// the validator's set-up), `None` otherwise (the caller then checks field by field, in
    /// column order, for the rejection). A field is valid on its own exactly when its bounds in
    /// the valid whole are character boundaries, which slicing the whole checks.
    fn fields_as_text<'r>(&self, record: Fields<'r>) -> Option<[&'r str; 6]> {
        let whole = std::str::from_utf8(record.bytes()).ok()?;
        let mut text = [""; 6];
        for column in COLUMNS {
            text[column.index()] = whole.get(record.range(self.positions[column.index()])?)?;
        }
        Some(text)
    }

    fn field<'r>(&self, record: Fields<'r>, column: Column) -> &'r [u8] {
        // `parse_fields` checked the record's width first, so every position exists.
        record
            .get(self.positions[column.index()])
            .unwrap_or_default()
    }
}

/// Parses one data record into an [`Event`], or says why it breaks the contract (see
/// [`parse_fields`]).
///
/// # Errors
/// A [`Rejection`] with the reason and a message naming the field and its value.
pub fn parse_record(
    record: &ByteRecord,
    layout: &HeaderLayout,
    ctx: &ValidationContext,
) -> Result<Event, Rejection> {
    let ends = field_ends(record);
    parse_fields(Fields::packed(record.as_slice(), &ends), layout, ctx)
}

/// Where each field of `record` ends in its `as_slice`.
fn field_ends(record: &ByteRecord) -> Vec<usize> {
    (0..record.len())
        .filter_map(|index| record.range(index).map(|range| range.end))
        .collect()
}

/// Parses one data record's fields into an [`Event`], or says why it breaks the contract.
///
/// Checks run in a fixed order (field count, UTF-8, then each column in canonical order), so a
/// record with one fault always gets that fault's reason.
///
/// # Errors
/// A [`Rejection`] with the reason and a message naming the field and its value.
pub fn parse_fields(
    record: Fields<'_>,
    layout: &HeaderLayout,
    ctx: &ValidationContext,
) -> Result<Event, Rejection> {
    if record.len() != layout.width {
        return Err(Rejection::record(
            RejectReason::WrongFieldCount,
            format!("expected {} fields, found {}", layout.width, record.len()),
        ));
    }
    let text = match layout.fields_as_text(record) {
        Some(text) => text,
        None => {
            let mut text = [""; 6];
            for column in COLUMNS {
                text[column.index()] = utf8_field(layout.field(record, column), column)?;
            }
            text
        }
    };
    let [event_id, user_id, product_id, event_type, price, timestamp] = text;
    let event_id = EventId::parse(event_id)?;
    let user_id = UserId::parse(user_id)?;
    let product_id = ProductId::parse(product_id)?;
    let event_type = EventType::parse(event_type)?;
    let event = Event {
        event_id,
        user_id,
        product_id,
        event_type,
        price: parse_price(price, event_type)?,
        event_timestamp: EventTimestamp::parse(timestamp, ctx)?,
    };
    Ok(event)
}

fn utf8_field(raw: &[u8], column: Column) -> Result<&str, Rejection> {
    std::str::from_utf8(raw).map_err(|e| {
        let lossy = String::from_utf8_lossy(raw);
        Rejection::field(
            RejectReason::NotUtf8,
            column,
            &lossy,
            &format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })
}

fn parse_price(raw: &str, event_type: EventType) -> Result<Option<Price>, Rejection> {
    match (raw.is_empty(), event_type.requires_price()) {
        (true, false) => Ok(None),
        (true, true) => Err(Rejection::field(
            RejectReason::MissingField,
            Column::Price,
            raw,
            &format!("required for `{event_type}` events"),
        )),
        (false, _) => Price::parse(raw).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(names: &[&str]) -> ByteRecord {
        ByteRecord::from(names.to_vec())
    }

    #[test]
    fn the_canonical_header_gives_the_canonical_layout() {
        let names: Vec<&str> = HEADER_LINE.split(',').collect();
        let layout = HeaderLayout::from_header(&header(&names), ExtraColumnPolicy::Fail).unwrap();
        assert_eq!(layout, HeaderLayout::canonical());
        assert_eq!(COLUMNS.map(Column::name).join(","), HEADER_LINE);
    }

    #[test]
    fn columns_are_matched_by_name_in_any_order_and_extras_follow_the_policy() {
        let names = [
            "note",
            "event_timestamp",
            "price",
            "event_type",
            "product_id",
            "user_id",
            "event_id",
        ];
        let layout = HeaderLayout::from_header(&header(&names), ExtraColumnPolicy::Ignore).unwrap();
        assert_eq!(layout.width(), 7);
        assert_eq!(
            HeaderLayout::from_header(&header(&names), ExtraColumnPolicy::Fail),
            Err(HeaderError::UnknownColumn("note".into()))
        );
    }

    #[test]
    fn a_bom_before_the_first_column_is_ignored() {
        let mut names: Vec<String> = HEADER_LINE.split(',').map(String::from).collect();
        names[0] = format!("\u{feff}{}", names[0]);
        let record = ByteRecord::from(names);
        assert!(HeaderLayout::from_header(&record, ExtraColumnPolicy::Fail).is_ok());
    }

    #[test]
    fn text_fields_are_those_of_a_field_by_field_check() {
        let layout = HeaderLayout::from_header(
            &header(&[
                "x",
                "event_timestamp",
                "price",
                "event_type",
                "product_id",
                "user_id",
                "event_id",
            ]),
            ExtraColumnPolicy::Ignore,
        )
        .unwrap();
        let record = ByteRecord::from(vec!["é", "t", "p", "ty", "pr", "u", "id"]);
        let ends = field_ends(&record);
        assert_eq!(
            layout.fields_as_text(Fields::packed(record.as_slice(), &ends)),
            Some(["id", "u", "pr", "ty", "p", "t"])
        );
        // "é" split across two fields: the whole is valid UTF-8, neither field is.
        let split = ByteRecord::from(vec![&b"\xc3"[..], b"\xa9", b"p", b"ty", b"pr", b"u", b"id"]);
        let ends = field_ends(&split);
        assert_eq!(
            layout.fields_as_text(Fields::packed(split.as_slice(), &ends)),
            None
        );
        assert_eq!(
            parse_record(&split, &layout, &crate::ValidationContext::now())
                .unwrap_err()
                .reason,
            RejectReason::NotUtf8
        );
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let missing = ["event_id", "user_id", "product_id", "event_type", "price"];
        assert_eq!(
            HeaderLayout::from_header(&header(&missing), ExtraColumnPolicy::Ignore),
            Err(HeaderError::MissingColumn(Column::EventTimestamp))
        );
        let misspelt = [
            "event_id",
            "userid",
            "product_id",
            "event_type",
            "price",
            "event_timestamp",
        ];
        let err = HeaderLayout::from_header(&header(&misspelt), ExtraColumnPolicy::Ignore);
        assert_eq!(err, Err(HeaderError::MissingColumn(Column::UserId)));
        let twice = ["event_id", "event_id"];
        assert_eq!(
            HeaderLayout::from_header(&header(&twice), ExtraColumnPolicy::Ignore),
            Err(HeaderError::DuplicateColumn("event_id".into()))
        );
        let binary = ByteRecord::from(vec![&b"\xff\xfe"[..]]);
        assert_eq!(
            HeaderLayout::from_header(&binary, ExtraColumnPolicy::Ignore),
            Err(HeaderError::NotUtf8)
        );
    }
}
