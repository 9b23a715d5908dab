//! Reading a file (blocking I/O, on a blocking thread): first its identity, then its rows in
//! chunks sent over a bounded channel. The rows pass through the contract's reader, so what is
//! accepted here is exactly what the contract accepts.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use chrono::Utc;
use event_contract::{EventReader, ExtraColumnPolicy, ReadError, RejectReason, ValidationContext};
use tokio::sync::mpsc;

use super::FileIdentity;
use crate::store::copy::{LineEvent, RejectedRow};

/// A chunk is also sent once its rows' raw text reaches this size: rejected rows keep their raw
/// text (up to the line cap each), so a row count alone would not bound memory.
const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// How rows are read.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Record size cap.
    pub max_line_bytes: usize,
    /// Extra header columns policy.
    pub extra_columns: ExtraColumnPolicy,
    /// Tolerated event clock skew.
    pub max_future_skew: chrono::Duration,
    /// Rows per chunk.
    pub chunk_rows: usize,
}

/// A slice of a file's rows.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Valid events.
    pub events: Vec<LineEvent>,
    /// Rejected rows.
    pub rejections: Vec<RejectedRow>,
}

impl Chunk {
    fn len(&self) -> usize {
        self.events.len() + self.rejections.len()
    }
}

/// What the reader tells the loader.
#[derive(Debug)]
pub enum ReadMessage {
    /// More rows.
    Chunk(Chunk),
    /// The file is not event CSV at all (empty, bad header): fail it as a whole.
    Unreadable {
        /// Stable code, e.g. `header_missing_column`.
        reason: &'static str,
        /// Details.
        message: String,
    },
    /// Reading broke off (I/O error); nothing of the file may be committed.
    Interrupted(io::Error),
    /// All rows were sent; the identity of what was actually read, to compare with the claim.
    Done(FileIdentity),
}

/// Reads a file once to learn its identity.
///
/// # Errors
/// When the file cannot be opened or read (`NotFound` if it vanished).
pub fn identify(path: &Path) -> io::Result<FileIdentity> {
    let mut reader = HashingReader::new(File::open(path)?);
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.identity())
}

/// Reads the file's rows into chunks and sends them; stops early if the receiver goes away.
pub fn read_rows(path: &Path, options: ReadOptions, tx: &mpsc::Sender<ReadMessage>) {
    let message = match stream_rows(path, options, tx) {
        Ok(Some(identity)) => ReadMessage::Done(identity),
        Ok(None) => return,
        Err(ReadError::Io(e)) => ReadMessage::Interrupted(e),
        Err(e) => ReadMessage::Unreadable {
            reason: e.code(),
            // A header error quotes the offending column name, which may hold NUL bytes.
            message: without_nul(e.to_string()),
        },
    };
    let _ = tx.blocking_send(message);
}

fn stream_rows(
    path: &Path,
    options: ReadOptions,
    tx: &mpsc::Sender<ReadMessage>,
) -> Result<Option<FileIdentity>, ReadError> {
    let ctx = ValidationContext {
        now: Utc::now(),
        max_future_skew: options.max_future_skew,
    };
    let file = HashingReader::new(File::open(path)?);
    let mut reader = EventReader::with_max_record_bytes(
        file,
        ctx,
        options.extra_columns,
        options.max_line_bytes,
    )?;
    let mut chunk = Chunk::default();
    let mut chunk_bytes = 0;
    while let Some(row) = reader.read_row()? {
        chunk_bytes += row.raw.len();
        match row.outcome {
            Ok(event) => chunk.events.push(LineEvent {
                event,
                line: row.line,
            }),
            Err(rejection) => chunk.rejections.push(RejectedRow {
                line: row.line,
                raw: storable_text(row.raw),
                reason: rejection.reason,
                // Messages may quote input (e.g. the `uuid` crate names the bad character).
                message: without_nul(rejection.message),
            }),
        }
        if (chunk.len() >= options.chunk_rows || chunk_bytes >= MAX_CHUNK_BYTES)
            && tx
                .blocking_send(ReadMessage::Chunk(std::mem::take(&mut chunk)))
                .is_err()
        {
            return Ok(None);
        }
        if chunk.len() == 0 {
            chunk_bytes = 0;
        }
    }
    if chunk.len() > 0 && tx.blocking_send(ReadMessage::Chunk(chunk)).is_err() {
        return Ok(None);
    }
    Ok(Some(reader.into_inner().identity()))
}

/// A raw line as a `text` column can hold it: invalid UTF-8 replaced by U+FFFD, NULs removed.
fn storable_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\0', "")
}

/// Text a `text` column can hold: NUL bytes removed (PostgreSQL rejects them, and one such value
/// would fail the whole batch's transaction on every retry).
fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "")
    } else {
        text
    }
}

/// Counts rejections by reason.
pub fn count_by_reason(rows: &[RejectedRow], into: &mut Vec<(RejectReason, u64)>) {
    for row in rows {
        match into.iter_mut().find(|(r, _)| *r == row.reason) {
            Some((_, n)) => *n += 1,
            None => into.push((row.reason, 1)),
        }
    }
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
            size: 0,
        }
    }

    /// The identity of everything read so far.
    pub fn identity(&self) -> FileIdentity {
        FileIdentity {
            size: self.size,
            hash: *self.hasher.finalize().as_bytes(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}
