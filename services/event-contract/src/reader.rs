//! Streaming reader of a whole event CSV file: header first, then one outcome per record.
//!
//! It holds one record at a time, so memory stays flat however large the file is.

use std::io::Read;

use csv::ByteRecord;

use crate::domain::{Event, ValidationContext};
use crate::layout::{parse_record, ExtraColumnPolicy, HeaderError, HeaderLayout};
use crate::reject::Rejection;

/// A data record's outcome and where it started in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRow {
    /// 1-based line number where the record starts (the header is line 1).
    pub line: u64,
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
    Io(#[from] csv::Error),
}

/// Reads event records from any byte stream.
pub struct EventReader<R> {
    csv: csv::Reader<R>,
    layout: HeaderLayout,
    ctx: ValidationContext,
    record: ByteRecord,
}

impl<R: Read> EventReader<R> {
    /// Reads and checks the header line.
    ///
    /// # Errors
    /// [`ReadError::Empty`], [`ReadError::Header`] or [`ReadError::Io`].
    pub fn new(
        input: R,
        ctx: ValidationContext,
        policy: ExtraColumnPolicy,
    ) -> Result<Self, ReadError> {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            // Records of the wrong width are the contract's `wrong_field_count`, not a read error.
            .flexible(true)
            .from_reader(input);
        let mut header = ByteRecord::new();
        if !csv.read_byte_record(&mut header)? {
            return Err(ReadError::Empty);
        }
        let layout = HeaderLayout::from_header(&header, policy)?;
        Ok(EventReader {
            csv,
            layout,
            ctx,
            record: ByteRecord::new(),
        })
    }

    /// The column layout learned from the header.
    pub fn layout(&self) -> &HeaderLayout {
        &self.layout
    }

    /// The last record read, as raw fields (for storing a rejected row).
    pub fn last_record(&self) -> &ByteRecord {
        &self.record
    }
}

impl<R: Read> Iterator for EventReader<R> {
    type Item = Result<ParsedRow, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.csv.read_byte_record(&mut self.record) {
            Ok(false) => None,
            Err(e) => Some(Err(e.into())),
            Ok(true) => {
                let line = self.record.position().map_or(0, |p| p.line());
                let outcome = parse_record(&self.record, &self.layout, &self.ctx);
                Some(Ok(ParsedRow { line, outcome }))
            }
        }
    }
}
