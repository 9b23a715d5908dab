//! Streaming reader of a whole event CSV file: header first, then one outcome per record.
//!
//! Memory is bounded by the record size cap, however large or hostile the file is.

use std::io::{self, Read};

use crate::domain::{Event, ValidationContext};
use crate::layout::{parse_fields, ExtraColumnPolicy, HeaderError, HeaderLayout};
use crate::records::{RawRecord, RecordReader, DEFAULT_MAX_RECORD_BYTES};
use crate::reject::{RejectReason, Rejection};

/// A data record's outcome and where it started in the file (owned form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRow {
    /// 1-based line number where the record starts (the header is line 1).
    pub line: u64,
    /// The event, or why the record breaks the contract.
    pub outcome: Result<Event, Rejection>,
}

/// A data record's outcome with the raw bytes it was read from (borrowed from the reader).
#[derive(Debug)]
pub struct RowRef<'a> {
    /// 1-based line number where the record starts.
    pub line: u64,
    /// The record as it appeared, without terminator (only a prefix when over the size cap).
    pub raw: &'a [u8],
    /// The event, or why the record breaks the contract.
    pub outcome: Result<Event, Rejection>,
}

/// Why a file cannot be read as event CSV at all (as opposed to one bad record).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file has no header line.
    #[error("file is empty (no header line)")]
    Empty,
    /// The header does not match the contract.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The underlying reader failed.
    #[error("cannot read file: {0}")]
    Io(#[from] io::Error),
}

impl ReadError {
    /// The codes of a file that is not event CSV at all (every code but `io_error`, which is a
    /// failure to read, retried, not a verdict on the file): a metric's label values, pre-created.
    pub const UNREADABLE_CODES: [&'static str; 7] = [
        "empty_file",
        "header_not_utf8",
        "header_missing_column",
        "header_duplicate_column",
        "header_unknown_column",
        "header_too_long",
        "header_unterminated_quote",
    ];

    /// A stable machine-readable code, for ledgers and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            ReadError::Empty => "empty_file",
            ReadError::Header(e) => e.code(),
            ReadError::Io(_) => "io_error",
        }
    }
}

/// Reads event records from any byte stream.
pub struct EventReader<R> {
    records: RecordReader<R>,
    layout: HeaderLayout,
    ctx: ValidationContext,
    max_record_bytes: usize,
}

impl<R: Read> EventReader<R> {
    /// Reads and checks the header line, with the default record size cap.
    ///
    /// # Errors
    /// [`ReadError::Empty`], [`ReadError::Header`] or [`ReadError::Io`].
    pub fn new(
        input: R,
        ctx: ValidationContext,
        policy: ExtraColumnPolicy,
    ) -> Result<Self, ReadError> {
        EventReader::with_max_record_bytes(input, ctx, policy, DEFAULT_MAX_RECORD_BYTES)
    }

    /// Reads and checks the header line; records over `max_record_bytes` are rejected as
    /// [`RejectReason::LineTooLong`] without being buffered.
    ///
    /// # Errors
    /// [`ReadError::Empty`], [`ReadError::Header`] or [`ReadError::Io`].
    pub fn with_max_record_bytes(
        input: R,
        ctx: ValidationContext,
        policy: ExtraColumnPolicy,
        max_record_bytes: usize,
    ) -> Result<Self, ReadError> {
        let mut records = RecordReader::new(input, max_record_bytes);
        let layout = match records.read_record()? {
            None => return Err(ReadError::Empty),
            Some(RawRecord::TooLong { .. }) => {
                return Err(HeaderError::TooLong(max_record_bytes).into())
            }
            Some(RawRecord::UnterminatedQuote { .. }) => {
                return Err(HeaderError::UnterminatedQuote.into())
            }
            Some(RawRecord::Fields { record, .. }) => {
                HeaderLayout::from_header(record.iter(), policy)?
            }
        };
        Ok(EventReader {
            records,
            layout,
            ctx,
            max_record_bytes,
        })
    }

    /// The column layout learned from the header.
    pub fn layout(&self) -> &HeaderLayout {
        &self.layout
    }

    /// Bytes consumed from the input so far.
    pub fn bytes_read(&self) -> u64 {
        self.records.bytes_read()
    }

    /// The underlying input (after the last record, it has been read to its end).
    pub fn into_inner(self) -> R {
        self.records.into_inner()
    }

    /// The next record with its raw text, or `None` at the end of the file.
    ///
    /// # Errors
    /// [`ReadError::Io`] when the underlying reader fails.
    pub fn read_row(&mut self) -> Result<Option<RowRef<'_>>, ReadError> {
        let cap = self.max_record_bytes;
        Ok(match self.records.read_record()? {
            None => None,
            Some(RawRecord::Fields { line, raw, record }) => Some(RowRef {
                line,
                raw,
                outcome: parse_fields(record, &self.layout, &self.ctx),
            }),
            Some(RawRecord::TooLong {
                line,
                raw_prefix,
                bytes,
            }) => Some(RowRef {
                line,
                raw: raw_prefix,
                outcome: Err(Rejection::record(
                    RejectReason::LineTooLong,
                    format!("record of {bytes} bytes exceeds the {cap}-byte limit"),
                )),
            }),
            Some(RawRecord::UnterminatedQuote { line, raw }) => Some(RowRef {
                line,
                raw,
                outcome: Err(Rejection::record(
                    RejectReason::UnterminatedQuote,
                    "a quoted field is not closed before the end of the line \
                     (no field may contain a line break)"
                        .to_owned(),
                )),
            }),
        })
    }
}

impl<R: Read> Iterator for EventReader<R> {
    type Item = Result<ParsedRow, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_row()
            .map(|row| {
                row.map(|r| ParsedRow {
                    line: r.line,
                    outcome: r.outcome,
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod unreadable_codes_tests {
    use super::ReadError;
    use crate::{Column, HeaderError};

    #[test]
    fn every_code_but_io_error_is_listed_as_unreadable() {
        let header = [
            HeaderError::NotUtf8,
            HeaderError::MissingColumn(Column::EventId),
            HeaderError::DuplicateColumn(String::new()),
            HeaderError::UnknownColumn(String::new()),
            HeaderError::TooLong(0),
            HeaderError::UnterminatedQuote,
        ];
        let codes: Vec<&str> = [ReadError::Empty.code()]
            .into_iter()
            .chain(header.into_iter().map(|e| ReadError::Header(e).code()))
            .collect();
        assert_eq!(codes, ReadError::UNREADABLE_CODES);
    }
}
