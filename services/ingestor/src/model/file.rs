//! Which file was loaded: its content identity (what) and its stamp on disk (where from).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

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

/// Which file on disk was read, as its descriptor's `fstat` saw it when it was opened: the
/// inode (device and number) a name pointed to, and that inode's size and modification time.
/// Content identity ([`FileIdentity`]) says *what* was loaded; the stamp says *where it came
/// from*, so that after COMMIT only that file is moved: a name that now points to another inode,
/// or to the same inode grown or rewritten since, holds bytes that were never loaded.
///
/// The stamp is taken before the first byte is read, so any later write (an append, an in-place
/// rewrite) shows as a changed size or mtime. Its limit is the filesystem's timestamp
/// granularity: a same-size rewrite within the same clock tick as the last write before the
/// open (a few ms on Linux, whose file times follow the coarse clock) leaves size and mtime
/// alike. Producers that publish with a rename, as the contract asks, never do that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    /// Device of the filesystem holding the inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: i64,
}

/// How a name differs from the file that was read through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    /// The name points to another file (a rename onto it, or delete and re-create).
    Replaced,
    /// Same file, but written to since it was read (appended, truncated or rewritten).
    Modified,
}

impl FileChange {
    /// Label values of `ingestor_files_changed_total`.
    pub const ALL: [FileChange; 2] = [FileChange::Replaced, FileChange::Modified];

    /// The stable code: a metric label value and a log field.
    pub fn code(self) -> &'static str {
        match self {
            FileChange::Replaced => "replaced",
            FileChange::Modified => "modified",
        }
    }
}

impl FileStamp {
    /// The stamp of a file's metadata (from `fstat` on a descriptor, or `lstat` on a name).
    pub fn of(metadata: &Metadata) -> Self {
        FileStamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
        }
    }

    /// How `now` (the same name looked at later) differs from this stamp; `None` if it is the
    /// very file that was read, unchanged.
    pub fn change_to(&self, now: &FileStamp) -> Option<FileChange> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            Some(FileChange::Replaced)
        } else if self != now {
            Some(FileChange::Modified)
        } else {
            None
        }
    }
}
