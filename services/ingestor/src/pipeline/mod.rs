//! The loading pipeline: a file's bytes become chunks of validated rows on a blocking thread
//! ([`reader`]) while the async loader ([`loader`]) streams earlier chunks into PostgreSQL, so
//! reading and writing overlap and memory stays bounded by the chunk channel. [`worker`] is the
//! loop around it that owns batching, retries and shutdown.

pub mod loader;
pub mod reader;
pub mod worker;

/// A file's identity: its size and a hash of its whole content. Names are not identity: a file
/// re-delivered under another name is the same file; a new file re-using an old name is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content: fast (GB/s, so hashing is not the bottleneck) and collision
    /// resistant, so two different files never share an identity.
    pub hash: [u8; 32],
}

impl FileIdentity {
    /// The key of the file's transaction-level advisory lock.
    pub fn lock_key(&self) -> i64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.hash[..8]);
        i64::from_le_bytes(first)
    }
}
