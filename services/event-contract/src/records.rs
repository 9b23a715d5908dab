//! Splitting a byte stream into CSV records without trusting it: every record comes with the raw
//! bytes it was read from (for storing a rejected line as it was) and no record may grow past a
//! byte cap (a 1 GiB "line" must not become a 1 GiB allocation).
//!
//! Hand-written on top of `csv_core` because the `csv` crate's reader buffers a whole record of
//! any size and does not expose the raw bytes behind it; `csv_core` does the actual CSV parsing
//! (quotes, CRLF, BOM) with the same rules the `csv` crate uses, so the two never disagree.

use std::io::{self, Read};

use csv::ByteRecord;
use csv_core::ReadRecordResult;

/// Default cap on one record's raw size: contract rows are ~100 bytes, so 64 KiB is generous
/// for anything legitimate.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;
/// How much of an over-long record is kept to show what it looked like.
const TOO_LONG_PREFIX_BYTES: usize = 1024;
/// Size of each read from the input.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Initial capacity for a record's field data; it grows on demand up to the cap.
const INITIAL_FIELD_BYTES: usize = 1024;
/// Initial number of field slots; it grows on demand.
const INITIAL_FIELDS: usize = 16;

/// One record read from the stream.
#[derive(Debug)]
pub enum RawRecord<'a> {
    /// A complete record within the size cap.
    Fields {
        /// 1-based line on which the record starts.
        line: u64,
        /// The record's bytes as they appeared, without line terminator.
        raw: &'a [u8],
        /// The parsed fields.
        record: &'a ByteRecord,
    },
    /// A record longer than the cap; its content was skipped, not buffered.
    TooLong {
        /// 1-based line on which the record starts.
        line: u64,
        /// The first bytes of the record.
        raw_prefix: &'a [u8],
        /// Its full size in bytes.
        bytes: u64,
    },
}

/// Reads records one at a time with memory bounded by the cap, whatever the input holds.
pub struct RecordReader<R> {
    input: R,
    core: csv_core::Reader,
    chunk: Box<[u8]>,
    chunk_pos: usize,
    chunk_len: usize,
    eof: bool,
    max_record_bytes: usize,
    raw: Vec<u8>,
    raw_bytes: u64,
    fields: Vec<u8>,
    fields_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    overflow: bool,
    record: ByteRecord,
    bytes_read: u64,
    /// 1-based line of the next byte to consume. Counted here rather than taken from
    /// `csv_core`, which counts only `\n`: a lone `\r` ends a record (and so a line) too, and
    /// two records must never share a line number (it is the key of a rejected row).
    line: u64,
    /// Whether the last byte consumed was `\r` (so a following `\n` ends no further line).
    after_cr: bool,
    /// The line of the current record's first byte that is not a line terminator.
    record_line: Option<u64>,
}

impl<R: Read> RecordReader<R> {
    /// A reader that refuses records over `max_record_bytes`.
    pub fn new(input: R, max_record_bytes: usize) -> Self {
        RecordReader {
            input,
            core: csv_core::Reader::new(),
            chunk: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            chunk_pos: 0,
            chunk_len: 0,
            eof: false,
            max_record_bytes: max_record_bytes.max(1),
            raw: Vec::new(),
            raw_bytes: 0,
            fields: vec![0; INITIAL_FIELD_BYTES],
            fields_len: 0,
            ends: vec![0; INITIAL_FIELDS],
            ends_len: 0,
            overflow: false,
            record: ByteRecord::new(),
            bytes_read: 0,
            line: 1,
            after_cr: false,
            record_line: None,
        }
    }

    /// Bytes consumed from the input so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The underlying input.
    pub fn into_inner(self) -> R {
        self.input
    }

    /// The next record, or `None` at the end of the input.
    ///
    /// # Errors
    /// When the underlying reader fails.
    pub fn read_record(&mut self) -> io::Result<Option<RawRecord<'_>>> {
        self.start_record();
        loop {
            if self.chunk_pos == self.chunk_len && !self.eof {
                self.refill()?;
            }
            let input = &self.chunk[self.chunk_pos..self.chunk_len];
            let (result, nin, nout, nend) = self.core.read_record(
                input,
                &mut self.fields[self.fields_len..],
                &mut self.ends[self.ends_len..],
            );
            self.keep_raw(nin);
            self.chunk_pos += nin;
            self.fields_len += nout;
            self.ends_len += nend;
            match result {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => self.grow_fields(),
                ReadRecordResult::OutputEndsFull => self.grow_ends(),
                ReadRecordResult::Record => return Ok(Some(self.finish_record())),
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    fn start_record(&mut self) {
        self.raw.clear();
        self.raw_bytes = 0;
        self.fields_len = 0;
        self.ends_len = 0;
        self.overflow = false;
        self.record_line = None;
    }

    fn refill(&mut self) -> io::Result<()> {
        let n = loop {
            match self.input.read(&mut self.chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.chunk_pos = 0;
        self.chunk_len = n;
        self.eof = n == 0;
        self.bytes_read += n as u64;
        Ok(())
    }

    fn keep_raw(&mut self, nin: usize) {
        let consumed = &self.chunk[self.chunk_pos..self.chunk_pos + nin];
        // Blank lines before a record are not part of it: they count neither toward its raw
        // text nor toward its size cap.
        let mut blank_prefix = 0;
        for (index, &byte) in consumed.iter().enumerate() {
            match byte {
                b'\r' => self.line += 1,
                b'\n' if !self.after_cr => self.line += 1,
                b'\n' => {}
                _ => {
                    self.record_line.get_or_insert(self.line);
                }
            }
            if self.record_line.is_none() {
                blank_prefix = index + 1;
            }
            self.after_cr = byte == b'\r';
        }
        let consumed = &consumed[blank_prefix..];
        let nin = consumed.len();
        self.raw_bytes += nin as u64;
        let room = if self.raw_bytes > self.max_record_bytes as u64 {
            self.overflow = true;
            self.raw.truncate(TOO_LONG_PREFIX_BYTES);
            TOO_LONG_PREFIX_BYTES.saturating_sub(self.raw.len())
        } else {
            nin
        };
        self.raw.extend_from_slice(&consumed[..room.min(nin)]);
    }

    fn grow_fields(&mut self) {
        if self.overflow || self.fields.len() >= self.max_record_bytes {
            // Over the cap: keep parsing to find the record's end, but drop its content.
            self.overflow = true;
            self.fields_len = 0;
            self.ends_len = 0;
        } else {
            let len = (self.fields.len() * 2).min(self.max_record_bytes.max(INITIAL_FIELD_BYTES));
            self.fields.resize(len, 0);
        }
    }

    fn grow_ends(&mut self) {
        if self.overflow || self.ends.len() >= self.max_record_bytes {
            self.overflow = true;
            self.fields_len = 0;
            self.ends_len = 0;
        } else {
            let len = self.ends.len() * 2;
            self.ends.resize(len, 0);
        }
    }

    fn finish_record(&mut self) -> RawRecord<'_> {
        let body = strip_leading_blank_lines(&self.raw);
        // Every record has a byte that is not a terminator (csv_core skips empty lines).
        let line = self.record_line.unwrap_or(self.line);
        if self.overflow {
            return RawRecord::TooLong {
                line,
                raw_prefix: body,
                bytes: self.raw_bytes,
            };
        }
        self.record.clear();
        let mut start = 0;
        for &end in &self.ends[..self.ends_len] {
            self.record.push_field(&self.fields[start..end]);
            start = end;
        }
        RawRecord::Fields {
            line,
            raw: strip_terminator(body),
            record: &self.record,
        }
    }
}

/// Blank lines before a record are consumed with it; they are not part of its raw text.
fn strip_leading_blank_lines(raw: &[u8]) -> &[u8] {
    let mut rest = raw;
    loop {
        if let Some(r) = rest
            .strip_prefix(b"\n")
            .or_else(|| rest.strip_prefix(b"\r"))
            .or_else(|| rest.strip_prefix(b"\xEF\xBB\xBF"))
        {
            rest = r;
        } else {
            return rest;
        }
    }
}

fn strip_terminator(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    raw.strip_suffix(b"\r").unwrap_or(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_and_raw(input: &[u8], cap: usize) -> Vec<(u64, String, Option<usize>)> {
        let mut reader = RecordReader::new(input, cap);
        let mut out = Vec::new();
        while let Some(record) = reader.read_record().unwrap() {
            out.push(match record {
                RawRecord::Fields { line, raw, record } => (
                    line,
                    String::from_utf8_lossy(raw).into_owned(),
                    Some(record.len()),
                ),
                RawRecord::TooLong {
                    line, raw_prefix, ..
                } => (line, String::from_utf8_lossy(raw_prefix).into_owned(), None),
            });
        }
        out
    }

    #[test]
    fn raw_text_and_start_lines_follow_the_file() {
        let input = b"h1,h2\n\na,b\r\n\"x\ny\",z\nlast,one";
        assert_eq!(
            lines_and_raw(input, 1024),
            vec![
                (1, "h1,h2".into(), Some(2)),
                (3, "a,b".into(), Some(2)),
                (4, "\"x\ny\",z".into(), Some(2)),
                (6, "last,one".into(), Some(2)),
            ]
        );
    }

    #[test]
    fn a_lone_carriage_return_ends_a_line_so_no_two_records_share_one() {
        let input = b"h\ra\rb\r\rc\r\n\"x\ry\"\nd";
        assert_eq!(
            lines_and_raw(input, 1024),
            vec![
                (1, "h".into(), Some(1)),
                (2, "a".into(), Some(1)),
                (3, "b".into(), Some(1)),
                (5, "c".into(), Some(1)),
                (6, "\"x\ry\"".into(), Some(1)),
                (8, "d".into(), Some(1)),
            ]
        );
    }

    #[test]
    fn an_over_long_record_is_skipped_not_buffered() {
        let mut input = b"h\nshort\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1 << 20));
        input.extend_from_slice(b"\nafter\n");
        let mut reader = RecordReader::new(&input[..], 4096);
        let mut kinds = Vec::new();
        while let Some(record) = reader.read_record().unwrap() {
            kinds.push(match record {
                RawRecord::Fields { line, .. } => (line, 0),
                RawRecord::TooLong {
                    line,
                    bytes,
                    raw_prefix,
                } => {
                    assert!(raw_prefix.len() <= TOO_LONG_PREFIX_BYTES);
                    (line, bytes)
                }
            });
        }
        assert_eq!(kinds, vec![(1, 0), (2, 0), (3, (1 << 20) + 1), (4, 0)]);
        assert!(
            reader.fields.len() <= 4096 * 2,
            "field buffer stayed near the cap"
        );
    }

    #[test]
    fn blank_lines_do_not_count_toward_the_size_cap() {
        let mut input = b"h\n".to_vec();
        input.extend(std::iter::repeat_n(b'\n', 10_000));
        input.extend_from_slice(b"a,b\n");
        let out = lines_and_raw(&input, 64);
        assert_eq!(
            out,
            vec![(1, "h".into(), Some(1)), (10_002, "a,b".into(), Some(2))]
        );
    }

    #[test]
    fn a_bom_is_not_part_of_the_first_record() {
        let out = lines_and_raw(b"\xEF\xBB\xBFa,b\n", 1024);
        assert_eq!(out, vec![(1, "a,b".into(), Some(2))]);
    }
}
