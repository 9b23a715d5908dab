//! Reading a file (blocking I/O, on a blocking thread): it is opened once, then its identity
//! is hashed and its rows are read in chunks sent over a bounded channel, both through that one
//! descriptor. The rows pass through the contract's reader, so what is accepted here is exactly
//! what the contract accepts.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::Path;

use chrono::Utc;
use event_contract::{EventReader, ExtraColumnPolicy, ReadError, RejectReason, ValidationContext};
use tokio::sync::mpsc;

use super::open_regular;
use crate::model::{FileFailure, FileIdentity, FileStamp, LineEvent, RejectedRow};

/// Size of each read while a file is hashed (pass 1).
const HASH_READ_BYTES: usize = 64 * 1024;

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

    /// An empty chunk with room for as many events as `full` holds: the next chunk of a file
    /// is most likely like the one before, and a vector grown by doubling moves its rows again
    /// at every step.
    fn sized_like(full: &Chunk) -> Chunk {
        Chunk {
            events: Vec::with_capacity(full.events.len()),
            rejections: Vec::new(),
        }
    }
}

/// What the reader tells the loader: chunks of rows, then how reading ended.
#[derive(Debug)]
pub enum ReadMessage {
    /// More rows.
    Chunk(Chunk),
    /// The last message.
    End(ReadEnd),
}

/// How reading a file ended.
#[derive(Debug)]
pub enum ReadEnd {
    /// All rows were sent; the identity of what was actually read, to compare with the claim.
    Done(FileIdentity),
    /// The file is not event CSV at all (empty, bad header): fail it as a whole.
    Unreadable(FileFailure),
    /// Reading broke off (I/O error); nothing of the file may be committed.
    Interrupted(io::Error),
}

/// A candidate opened for loading: the one descriptor every pass reads from, which file it is,
/// and what it held when it was hashed.
#[derive(Debug)]
pub struct OpenedFile {
    /// The descriptor. Names can be renamed over, deleted or re-created at any moment; an open
    /// descriptor keeps pointing to the same inode, so the hash, the rows and the stamp all
    /// describe one file.
    pub file: File,
    /// The file as `fstat` saw it at the open, before the first byte was read.
    pub stamp: FileStamp,
    /// Its content identity (pass 1).
    pub identity: FileIdentity,
}

/// Opens `path` once and hashes it (pass 1) through that descriptor.
///
/// # Errors
/// When the name cannot be opened (`NotFound` if it vanished), is a symbolic link, is not a
/// regular file, or cannot be read.
pub fn open(path: &Path) -> io::Result<OpenedFile> {
    let mut file = open_regular(path)?;
    // fstat on the descriptor, not stat on the name: the answer is about the file we read.
    let stamp = FileStamp::of(&file.metadata()?);
    let mut reader = HashingReader::new(&mut file);
    // Not `io::copy`, whose 8 KiB pieces take a read call each and give BLAKE3 too little at
    // once to hash its 1 KiB chunks side by side at the full width of the CPU's vectors.
    let mut buf = vec![0; HASH_READ_BYTES];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let identity = reader.identity();
    Ok(OpenedFile {
        file,
        stamp,
        identity,
    })
}

/// Reads a file once to learn its identity.
///
/// # Errors
/// Like [`open`].
pub fn identify(path: &Path) -> io::Result<FileIdentity> {
    Ok(open(path)?.identity)
}

/// Reads the rows of `file` from its start into chunks and sends them (pass 2, which hashes
/// again what it reads); stops early if the receiver goes away.
pub fn read_rows(file: impl Read + Seek, options: ReadOptions, tx: &mpsc::Sender<ReadMessage>) {
    let end = match stream_rows(file, options, tx) {
        Ok(Some(identity)) => ReadEnd::Done(identity),
        Ok(None) => return,
        Err(ReadError::Io(e)) => ReadEnd::Interrupted(e),
        Err(ReadError::Empty) => ReadEnd::Unreadable(FileFailure::Empty),
        Err(ReadError::Header(e)) => ReadEnd::Unreadable(FileFailure::BadHeader(e)),
    };
    let _ = tx.blocking_send(ReadMessage::End(end));
}

fn stream_rows(
    mut file: impl Read + Seek,
    options: ReadOptions,
    tx: &mpsc::Sender<ReadMessage>,
) -> Result<Option<FileIdentity>, ReadError> {
    let ctx = ValidationContext {
        now: Utc::now(),
        max_future_skew: options.max_future_skew,
    };
    // Pass 1 left the offset at the end.
    file.rewind()?;
    let file = HashingReader::new(file);
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
        if chunk.len() >= options.chunk_rows || chunk_bytes >= MAX_CHUNK_BYTES {
            let next = Chunk::sized_like(&chunk);
            if tx
                .blocking_send(ReadMessage::Chunk(std::mem::replace(&mut chunk, next)))
                .is_err()
            {
                return Ok(None);
            }
            chunk_bytes = 0;
        }
    }
    if chunk.len() > 0 && tx.blocking_send(ReadMessage::Chunk(chunk)).is_err() {
        return Ok(None);
    }
    Ok(Some(reader.into_inner().identity()))
}

/// A raw line as a `text` column can hold it: invalid UTF-8 replaced by U+FFFD, NULs removed.
pub(crate) fn storable_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\0', "")
}

/// Text a `text` column can hold: NUL bytes removed (PostgreSQL rejects them, and one such value
/// would fail the whole batch's transaction on every retry).
pub(crate) fn without_nul(text: String) -> String {
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
