//! Splitting a byte stream into CSV records without trusting it: every record comes with the raw
//! bytes it was read from (for storing a rejected line as it was) and no record may grow past a
//! byte cap (a 1 GiB "line" must not become a 1 GiB allocation).
//!
//! Hand-written on top of `csv_core` because the `csv` crate's reader buffers a whole record of
//! any size and does not expose the raw bytes behind it; `csv_core` does the actual CSV parsing
//! (quotes, CRLF, BOM) with the same rules the `csv` crate uses, so the two never disagree.
//!
//! One deliberate departure from standard CSV: a line break inside a quoted field ends the record
//! as [`RawRecord::UnterminatedQuote`]. No contract field may contain a line break, so such a
//! record can only be a stray `"`; standard CSV would read on to the next `"`, possibly hundreds
//! of valid rows later, and swallow them all into one rejected record. Stopping at the line end
//! makes one stray quote cost one row: reading resumes at the next line.
//!
//! A line without any `"` (nearly every line of a real file) takes a fast path that splits it at
//! its commas without `csv_core`: `csv_core` would read it the same way (no quote, so every comma
//! ends a field and nothing is unescaped), but byte by byte through its state machine, and the
//! line-end, quote and line-number tracking here would each look at every byte again. The fast
//! path finds the line end and any quote with one `memchr3`, then the commas eight bytes at a
//! time (see [`comma_positions`]), and hands out the line where it lies in the read buffer,
//! copying nothing. Both paths give the same records
//! (`the_fast_path_reads_exactly_what_csv_core_reads` compares them on random input).

use std::io::{self, Read};
use std::ops::Range;

use csv_core::ReadRecordResult;
use memchr::{memchr, memchr2, memchr2_iter, memchr3};

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
        record: Fields<'a>,
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
    /// A record whose quoted field was still open at a line break or at the end of the input;
    /// it ends there, and the next record starts on the next line.
    UnterminatedQuote {
        /// 1-based line on which the record starts.
        line: u64,
        /// The record's bytes up to the line break, without terminator.
        raw: &'a [u8],
    },
}

/// A record's fields, borrowed from the reader: field `i` ends at `ends[i]` in `bytes` and
/// starts where the field before it ended, plus the separator's width (`gap`): 0 for
/// `csv_core`'s output (fields back to back, unescaped), 1 for a line split in place at its
/// commas.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    bytes: &'a [u8],
    ends: &'a [usize],
    gap: usize,
}

impl<'a> Fields<'a> {
    /// Fields stored back to back in `bytes` (as `csv::ByteRecord::as_slice` holds them), each
    /// ending at its entry of `ends`.
    pub fn packed(bytes: &'a [u8], ends: &'a [usize]) -> Self {
        Fields {
            bytes,
            ends,
            gap: 0,
        }
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Where field `index` lies in [`Fields::bytes`].
    pub fn range(&self, index: usize) -> Option<Range<usize>> {
        let end = *self.ends.get(index)?;
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1] + self.gap,
        };
        Some(start..end)
    }

    /// Field `index`.
    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        self.bytes.get(self.range(index)?)
    }

    /// The bytes the fields lie in (with the commas between them, for a line split in place):
    /// when they are valid UTF-8, so is every field, as a comma never falls inside a character.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let fields = *self;
        (0..fields.len()).filter_map(move |index| fields.get(index))
    }
}

/// Where the reader stands in a record, mirroring the states of `csv_core`'s parser that decide
/// whether a line break ends the record or belongs to a quoted field (default dialect: `,`,
/// `"` with doubled-quote escapes, no escape byte, no comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    /// At the start of a field (or of a record).
    FieldStart,
    /// In an unquoted field: a `"` here is an ordinary byte.
    Unquoted,
    /// Inside a quoted field: a line break here is what standard CSV would swallow.
    Quoted,
    /// Just after a `"` inside a quoted field: either an escaped `""` or the closing quote.
    QuoteInQuoted,
}

impl QuoteState {
    fn step(self, byte: u8) -> QuoteState {
        match (self, byte) {
            (_, b'\r' | b'\n') if self != QuoteState::Quoted => QuoteState::FieldStart,
            (QuoteState::FieldStart, b'"') => QuoteState::Quoted,
            (QuoteState::FieldStart | QuoteState::Unquoted | QuoteState::QuoteInQuoted, b',') => {
                QuoteState::FieldStart
            }
            (QuoteState::FieldStart | QuoteState::Unquoted, _) => QuoteState::Unquoted,
            (QuoteState::Quoted, b'"') => QuoteState::QuoteInQuoted,
            (QuoteState::Quoted, _) => QuoteState::Quoted,
            (QuoteState::QuoteInQuoted, b'"') => QuoteState::Quoted,
            // After a closing quote, csv_core appends further bytes to the field unquoted.
            (QuoteState::QuoteInQuoted, _) => QuoteState::Unquoted,
        }
    }
}

/// The UTF-8 byte-order mark `csv_core` strips from the first input it is given.
const BOM: &[u8] = b"\xEF\xBB\xBF";

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
    /// Where the fields of a line read by the fast path end (the commas, then the line's end).
    split_ends: Vec<usize>,
    /// Where the line the fast path read lies in the buffer, without its line break.
    split_line: Range<usize>,
    bytes_read: u64,
    /// 1-based line of the next byte to consume. Counted here rather than taken from
    /// `csv_core`, which counts only `\n`: a lone `\r` ends a record (and so a line) too, and
    /// two records must never share a line number (it is the key of a rejected row).
    line: u64,
    /// Whether the last byte consumed was `\r` (so a following `\n` ends no further line).
    after_cr: bool,
    /// The line of the current record's first byte that is not a line terminator.
    record_line: Option<u64>,
    /// Quote state after the last byte consumed, to stop at a line break in a quoted field.
    quote: QuoteState,
    /// Whether `csv_core` has been given no input since it was created or reset (it then strips
    /// a leading BOM, which the quote state must skip too).
    core_fresh: bool,
    /// Bytes at the start of the next consumed input that `csv_core` strips as a BOM.
    bom_skip: usize,
    /// Whether `csv_core` stands between records (it has read no byte of the current one), so
    /// that a whole line may be read without it (see the module doc).
    core_between_records: bool,
    /// Whether lines without quotes take the fast path (always, but for the test that compares
    /// the two paths).
    fast_lines: bool,
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
            split_ends: Vec::with_capacity(INITIAL_FIELDS),
            split_line: 0..0,
            bytes_read: 0,
            line: 1,
            after_cr: false,
            record_line: None,
            quote: QuoteState::FieldStart,
            core_fresh: true,
            bom_skip: 0,
            core_between_records: true,
            fast_lines: true,
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
            let available = &self.chunk[self.chunk_pos..self.chunk_len];
            if self.core_fresh
                && !self.eof
                && available.len() <= BOM.len()
                && BOM.starts_with(available)
            {
                // csv_core strips a BOM only when its first input holds all of it, and takes
                // an input of just the BOM for the end of the data: give it more bytes first.
                self.fill_at_least(BOM.len() + 1)?;
                continue;
            }
            if available.is_empty() && self.quote == QuoteState::Quoted {
                // The input ends inside a quoted field: the same stray quote as at a line break.
                return Ok(Some(self.end_unterminated()));
            }
            self.bom_skip = if self.core_fresh && available.starts_with(BOM) {
                BOM.len()
            } else {
                0
            };
            let len = match self.scan_to_line_end(available) {
                LineEnd::InQuotes(0) => {
                    // Consume the line break as this record's end; the next record starts after it.
                    self.keep_raw(1);
                    self.chunk_pos += 1;
                    return Ok(Some(self.end_unterminated()));
                }
                LineEnd::Plain(len) if self.fast_lines && self.core_between_records => {
                    if self.read_plain_line(len) {
                        return Ok(Some(self.finish_record(true)));
                    }
                    // A blank line: consumed, as csv_core would skip it; the record follows.
                    continue;
                }
                LineEnd::InQuotes(len) | LineEnd::Through(len) | LineEnd::Plain(len) => len,
            };
            let input = &self.chunk[self.chunk_pos..self.chunk_pos + len];
            self.core_fresh = false;
            self.core_between_records = false;
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
                ReadRecordResult::Record => {
                    self.core_between_records = true;
                    return Ok(Some(self.finish_record(false)));
                }
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// How much of `input` `csv_core` may see: up to and including the first line break, or
    /// only up to it when it falls inside a quoted field (so `csv_core` never reads across it).
    /// Scanning stops at the first line break, so each byte is scanned about once per record.
    fn scan_to_line_end(&self, input: &[u8]) -> LineEnd {
        if self.quote == QuoteState::FieldStart && !self.core_fresh {
            // From the start of a record (no BOM to skip), a line break before any quote ends
            // a whole line in which nothing can be quoted.
            if let Some(end) = memchr3(b'\r', b'\n', b'"', input) {
                if input[end] != b'"' {
                    return LineEnd::Plain(end + 1);
                }
            }
        }
        let skip = self.bom_skip.min(input.len());
        let line_end = memchr2(b'\r', b'\n', &input[skip..]).map(|i| skip + i);
        let body = &input[skip..line_end.unwrap_or(input.len())];
        if matches!(self.quote, QuoteState::FieldStart | QuoteState::Unquoted)
            && memchr(b'"', body).is_none()
        {
            // Outside quotes and no quote before the line end: the line break ends the record.
            return LineEnd::Through(line_end.map_or(input.len(), |end| end + 1));
        }
        let mut state = self.quote;
        for (index, &byte) in input.iter().enumerate().skip(skip) {
            if byte == b'\r' || byte == b'\n' {
                return if state == QuoteState::Quoted {
                    LineEnd::InQuotes(index)
                } else {
                    LineEnd::Through(index + 1)
                };
            }
            state = state.step(byte);
        }
        LineEnd::Through(input.len())
    }

    /// Reads the next `len` buffered bytes, a whole line without quotes ending in its line
    /// break, at the start of a record, without `csv_core`: its fields are the text between
    /// commas, left where they are in the buffer. Returns false for a blank line (no record;
    /// `csv_core` skips those too).
    fn read_plain_line(&mut self, len: usize) -> bool {
        if len == 1 {
            // Only the line break.
            self.keep_raw(1);
            self.chunk_pos += 1;
            return false;
        }
        // `keep_raw`'s bookkeeping, for a line known to hold one line break, at its end, and
        // no quote: the record starts on this line, which its break ends (the quote state stays
        // at a field start), and nothing of it is in `raw` yet (blank lines before it add none).
        let start = self.chunk_pos;
        self.chunk_pos += len;
        self.record_line.get_or_insert(self.line);
        self.line += 1;
        self.after_cr = self.chunk[start + len - 1] == b'\r';
        if len > self.max_record_bytes {
            // Over the cap: only its prefix is kept, as for any over-long record.
            self.push_raw(start, len);
            return true;
        }
        self.split_line = start..start + len - 1;
        comma_positions(&self.chunk[self.split_line.clone()], &mut self.split_ends);
        true
    }

    /// Ends the current record at an open quote and readies the parser for the next line.
    fn end_unterminated(&mut self) -> RawRecord<'_> {
        // csv_core still believes it is inside the quoted field; start it afresh.
        self.core.reset();
        self.core_fresh = true;
        self.core_between_records = true;
        self.quote = QuoteState::FieldStart;
        let body = strip_leading_blank_lines(&self.raw);
        let line = self.record_line.unwrap_or(self.line);
        if self.overflow {
            // The size cap is checked first, whatever else is wrong with the record.
            return RawRecord::TooLong {
                line,
                raw_prefix: body,
                bytes: self.raw_bytes,
            };
        }
        RawRecord::UnterminatedQuote {
            line,
            raw: strip_terminator(body),
        }
    }

    fn start_record(&mut self) {
        self.raw.clear();
        self.raw_bytes = 0;
        self.fields_len = 0;
        self.ends_len = 0;
        self.overflow = false;
        self.record_line = None;
        self.quote = QuoteState::FieldStart;
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

    /// Moves the unread bytes to the front of the buffer and reads until at least `want` bytes
    /// are buffered or the input ends.
    fn fill_at_least(&mut self, want: usize) -> io::Result<()> {
        self.chunk.copy_within(self.chunk_pos..self.chunk_len, 0);
        self.chunk_len -= self.chunk_pos;
        self.chunk_pos = 0;
        while self.chunk_len < want && !self.eof {
            let n = match self.input.read(&mut self.chunk[self.chunk_len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            self.chunk_len += n;
            self.eof = n == 0;
            self.bytes_read += n as u64;
        }
        Ok(())
    }

    fn keep_raw(&mut self, nin: usize) {
        let consumed = &self.chunk[self.chunk_pos..self.chunk_pos + nin];
        let skip = std::mem::take(&mut self.bom_skip).min(nin);
        let stepped = &consumed[skip..];
        if matches!(self.quote, QuoteState::FieldStart | QuoteState::Unquoted)
            && memchr(b'"', stepped).is_none()
        {
            // Outside quotes, bytes other than `"` lead to `FieldStart` or `Unquoted`, decided
            // by the last byte alone.
            if let Some(&last) = stepped.last() {
                self.quote = self.quote.step(last);
            }
        } else {
            for &byte in stepped {
                self.quote = self.quote.step(byte);
            }
        }
        // Blank lines before a record are not part of it: they count neither toward its raw
        // text nor toward its size cap. Only line breaks need a look: any other byte starts
        // the record (if it has not started yet).
        let mut blank_prefix = 0;
        let mut next = 0;
        for index in memchr2_iter(b'\r', b'\n', consumed) {
            if index > next {
                self.record_line.get_or_insert(self.line);
                self.after_cr = false;
            }
            let byte = consumed[index];
            if byte == b'\r' || !self.after_cr {
                self.line += 1;
            }
            if self.record_line.is_none() {
                blank_prefix = index + 1;
            }
            self.after_cr = byte == b'\r';
            next = index + 1;
        }
        if next < consumed.len() {
            self.record_line.get_or_insert(self.line);
            self.after_cr = false;
        }
        let start = self.chunk_pos + blank_prefix;
        self.push_raw(start, nin - blank_prefix);
    }

    /// Adds `len` consumed bytes of the chunk from `start` to the record's raw text, up to the
    /// size cap (past it, the record is over-long and only a prefix is kept).
    fn push_raw(&mut self, start: usize, len: usize) {
        let consumed = &self.chunk[start..start + len];
        self.raw_bytes += len as u64;
        let room = if self.raw_bytes > self.max_record_bytes as u64 {
            self.overflow = true;
            self.raw.truncate(TOO_LONG_PREFIX_BYTES);
            TOO_LONG_PREFIX_BYTES.saturating_sub(self.raw.len())
        } else {
            len
        };
        self.raw.extend_from_slice(&consumed[..room.min(len)]);
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

    /// The record just read; `split` when the fast path read it (it lies in the buffer at
    /// `split_line`; otherwise `csv_core` put its fields in its output buffers).
    fn finish_record(&mut self, split: bool) -> RawRecord<'_> {
        // Every record has a byte that is not a terminator (csv_core skips empty lines).
        let line = self.record_line.unwrap_or(self.line);
        if self.overflow {
            return RawRecord::TooLong {
                line,
                raw_prefix: strip_leading_blank_lines(&self.raw),
                bytes: self.raw_bytes,
            };
        }
        if split {
            let fields = &self.chunk[self.split_line.clone()];
            return RawRecord::Fields {
                line,
                // As the other path gives it: without a BOM at its start (one in the middle of
                // a file is still a field's content).
                raw: strip_leading_blank_lines(fields),
                record: Fields {
                    bytes: fields,
                    ends: &self.split_ends,
                    gap: 1,
                },
            };
        }
        RawRecord::Fields {
            line,
            raw: strip_terminator(strip_leading_blank_lines(&self.raw)),
            record: Fields::packed(&self.fields[..self.fields_len], &self.ends[..self.ends_len]),
        }
    }
}

/// Sets `ends` to where each comma of `line` is, then the line's length: where its fields end.
///
/// Eight bytes at a time, by hand: a word's commas are its zero bytes once it is XORed with
/// eight commas, and an exact zero-byte test takes a few arithmetic operations per word (no
/// carry crosses a byte). `memchr` would pay its set-up per comma, more than this whole scan
/// of a hundred-byte line; no crate splits a short line at one byte faster.
fn comma_positions(line: &[u8], ends: &mut Vec<usize>) {
    const COMMAS: u64 = u64::from_ne_bytes([b','; 8]);
    const LOW_BITS: u64 = u64::from_ne_bytes([0x7f; 8]);
    ends.clear();
    let mut words = line.chunks_exact(8);
    let mut offset = 0;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes) ^ COMMAS;
        // The high bit of each byte that was a comma (is zero in `x`), and no other bit.
        let mut commas = !(((x & LOW_BITS) + LOW_BITS) | x | LOW_BITS);
        while commas != 0 {
            ends.push(offset + commas.trailing_zeros() as usize / 8);
            commas &= commas - 1;
        }
        offset += 8;
    }
    for (index, &byte) in words.remainder().iter().enumerate() {
        if byte == b',' {
            ends.push(offset + index);
        }
    }
    ends.push(line.len());
}

/// Where the next line break in the input falls.
enum LineEnd {
    /// This many bytes are a whole line, through its line break, without any `"`, starting
    /// where a record starts: the fast path may read it.
    Plain(usize),
    /// This many bytes reach through the first line break outside quotes (or all of the input).
    Through(usize),
    /// A line break inside a quoted field starts after this many bytes.
    InQuotes(usize),
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
                RawRecord::UnterminatedQuote { line, raw } => {
                    panic!("line {line}: open quote in {raw:?}")
                }
            });
        }
        out
    }

    #[test]
    fn raw_text_and_start_lines_follow_the_file() {
        let input = b"h1,h2\n\na,b\r\n\"x,\"\"y\"\"\",z\nlast,one";
        assert_eq!(
            lines_and_raw(input, 1024),
            vec![
                (1, "h1,h2".into(), Some(2)),
                (3, "a,b".into(), Some(2)),
                (4, "\"x,\"\"y\"\"\",z".into(), Some(2)),
                (5, "last,one".into(), Some(2)),
            ]
        );
    }

    #[test]
    fn a_lone_carriage_return_ends_a_line_so_no_two_records_share_one() {
        let input = b"h\ra\rb\r\rc\r\n\"x\"\ry\nd";
        assert_eq!(
            lines_and_raw(input, 1024),
            vec![
                (1, "h".into(), Some(1)),
                (2, "a".into(), Some(1)),
                (3, "b".into(), Some(1)),
                (5, "c".into(), Some(1)),
                (6, "\"x\"".into(), Some(1)),
                (7, "y".into(), Some(1)),
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
                RawRecord::UnterminatedQuote { line, .. } => panic!("line {line}: open quote"),
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

    /// Like `lines_and_raw`, with `None` fields for a record ended at an open quote.
    fn outcomes(input: &[u8], cap: usize) -> Vec<(u64, String, Option<usize>)> {
        let mut reader = RecordReader::new(input, cap);
        let mut out = Vec::new();
        while let Some(record) = reader.read_record().unwrap() {
            out.push(match record {
                RawRecord::Fields { line, raw, record } => (
                    line,
                    String::from_utf8_lossy(raw).into_owned(),
                    Some(record.len()),
                ),
                RawRecord::UnterminatedQuote { line, raw } => {
                    (line, format!("open:{}", String::from_utf8_lossy(raw)), None)
                }
                RawRecord::TooLong { line, bytes, .. } => (line, format!("long:{bytes}"), None),
            });
        }
        out
    }

    #[test]
    fn a_line_break_in_a_quoted_field_ends_the_record_and_the_next_line_is_read() {
        let input = b"h\na,\"b\nc,d\r\n\"e\r\"f\",g\n\"\"\"\n";
        assert_eq!(
            outcomes(input, 1024),
            vec![
                (1, "h".into(), Some(1)),
                (2, "open:a,\"b".into(), None),
                (3, "c,d".into(), Some(2)),
                (4, "open:\"e".into(), None),
                (5, "\"f\",g".into(), Some(2)),
                // `"""` is an escaped quote inside a quoted field still open at the line end.
                (6, "open:\"\"\"".into(), None),
            ]
        );
    }

    #[test]
    fn a_quote_open_at_the_end_of_the_input_ends_the_last_record() {
        assert_eq!(
            outcomes(b"h\na,\"b", 1024),
            vec![(1, "h".into(), Some(1)), (2, "open:a,\"b".into(), None)]
        );
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_or_after_a_closing_quote_opens_nothing() {
        // csv_core reads `a"b` and `"x"y` as plain fields; so must the quote tracking.
        assert_eq!(
            outcomes(b"a\"b,\"x\"y\"\nc,d\n", 1024),
            vec![
                (1, "a\"b,\"x\"y\"".into(), Some(2)),
                (2, "c,d".into(), Some(2))
            ]
        );
    }

    #[test]
    fn an_over_long_record_with_an_open_quote_is_too_long() {
        let mut input = b"h\n\"".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\nafter\n");
        assert_eq!(
            outcomes(&input, 4096),
            vec![
                (1, "h".into(), Some(1)),
                (2, "long:5002".into(), None),
                (3, "after".into(), Some(1)),
            ]
        );
    }

    #[test]
    fn a_bom_before_a_quoted_field_is_skipped_like_csv_core_does() {
        assert_eq!(
            outcomes(b"\xEF\xBB\xBF\"a\nb\n", 1024),
            vec![(1, "open:\"a".into(), None), (2, "b".into(), Some(1))]
        );
        assert_eq!(
            outcomes(b"\xEF\xBB\xBF\"a\",b\nc\n", 1024),
            vec![(1, "\"a\",b".into(), Some(2)), (2, "c".into(), Some(1))]
        );
    }

    /// Hands out one byte per read.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((&first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            if let Some(slot) = buf.first_mut() {
                *slot = first;
                self.0 = rest;
                return Ok(1);
            }
            Ok(0)
        }
    }

    #[test]
    fn a_bom_split_across_reads_is_still_stripped() {
        let mut reader = RecordReader::new(OneByte(b"\xEF\xBB\xBFa,b\n\"c\nd\n"), 1024);
        let mut out = Vec::new();
        while let Some(record) = reader.read_record().unwrap() {
            out.push(match record {
                RawRecord::Fields { line, record, .. } => {
                    (line, record.iter().collect::<Vec<_>>().concat())
                }
                RawRecord::UnterminatedQuote { line, raw } => (line, raw.to_vec()),
                RawRecord::TooLong { line, .. } => (line, b"long".to_vec()),
            });
        }
        assert_eq!(
            out,
            vec![
                (1, b"ab".to_vec()),
                (2, b"\"c".to_vec()),
                (3, b"d".to_vec())
            ]
        );
        assert_eq!(reader.bytes_read(), 12);
    }

    /// Hands out at most `.1` bytes per read.
    struct Pieces<'a>(&'a [u8], usize);

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Every record of `input` as (kind, line, raw text, fields), and the bytes read.
    fn everything(input: &[u8], cap: usize, piece: usize, fast: bool) -> (Vec<String>, u64) {
        let mut reader = RecordReader::new(Pieces(input, piece), cap);
        reader.fast_lines = fast;
        let mut out = Vec::new();
        while let Some(record) = reader.read_record().unwrap() {
            out.push(match record {
                RawRecord::Fields { line, raw, record } => {
                    format!(
                        "fields {line} {raw:?} {:?}",
                        record.iter().collect::<Vec<_>>()
                    )
                }
                RawRecord::TooLong {
                    line,
                    raw_prefix,
                    bytes,
                } => format!("long {line} {raw_prefix:?} {bytes}"),
                RawRecord::UnterminatedQuote { line, raw } => format!("open {line} {raw:?}"),
            });
        }
        (out, reader.bytes_read())
    }

    #[test]
    fn the_fast_path_reads_exactly_what_csv_core_reads() {
        use proptest::prelude::*;
        let byte = prop::sample::select(vec![
            b'a', b'b', b',', b',', b'"', b'\r', b'\n', b'\n', 0xEF, 0xBB, 0xBF,
        ]);
        let input = prop::collection::vec(byte, 0..300);
        let config = ProptestConfig::with_cases(3000);
        // The reference reads one byte at a time through csv_core: no line is ever whole in the
        // buffer, and every step of the quote and line tracking sees a single byte.
        proptest!(config, |(input in input, cap in 1usize..40, piece in 1usize..80)| {
            let reference = everything(&input, cap, 1, false);
            prop_assert_eq!(&everything(&input, cap, piece, true), &reference);
            prop_assert_eq!(&everything(&input, cap, piece, false), &reference);
        });
        // Whole files of contract-like rows, read as the ingestor reads them.
        let row = "d1622521-381b-4710-ab0d-64a546c96238,500051956,1001626,view,18.99,2026-11-01T00:00:00Z";
        let file = format!("\u{feff}h1,h2\n{row}\r\n\n{row}\n\"{row}\n{row}\r{row}").repeat(200);
        for cap in [64, 1024] {
            let (records, _) = everything(file.as_bytes(), cap, READ_CHUNK_BYTES, true);
            assert!(records.len() > 1000);
            assert_eq!(
                (records, file.len() as u64),
                everything(file.as_bytes(), cap, 1, false)
            );
        }
    }

    #[test]
    fn commas_are_found_wherever_they_fall_in_a_word() {
        use proptest::prelude::*;
        let byte = prop::sample::select(vec![b',', b'a', 0xAC, 0x2D, 0x2B, 0x00, 0xFF]);
        proptest!(|(line in prop::collection::vec(byte, 0..70))| {
            let mut ends = vec![99];
            comma_positions(&line, &mut ends);
            let mut expected: Vec<usize> = memchr::memchr_iter(b',', &line).collect();
            expected.push(line.len());
            prop_assert_eq!(ends, expected);
        });
    }

    #[test]
    fn a_bom_is_not_part_of_the_first_record() {
        let out = lines_and_raw(b"\xEF\xBB\xBFa,b\n", 1024);
        assert_eq!(out, vec![(1, "a,b".into(), Some(2))]);
    }
}
