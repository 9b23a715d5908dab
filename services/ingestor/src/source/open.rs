//! Opening a discovered file safely: what the scan saw as a regular file may be a symbolic link,
//! a FIFO or a device by the time it is opened, and none of those may be read.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// Opens `path` for reading if it is a regular file, without following a symbolic link.
///
/// # Errors
/// When the name cannot be opened, is a symbolic link or is not a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    // The scan saw a regular file, but the name may point elsewhere by now. O_NOFOLLOW refuses
    // a symbolic link instead of reading a file outside the directory; O_NONBLOCK makes opening
    // a FIFO return at once instead of waiting for a writer (fstat then refuses it); on a
    // regular file O_NONBLOCK changes nothing.
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegularFile));
    }
    Ok(file)
}

/// The error payload of [`open_regular`] for a name that holds no regular file.
#[derive(Debug)]
struct NotRegularFile;

impl std::fmt::Display for NotRegularFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a regular file (a FIFO, a socket, a device or a directory)")
    }
}

impl std::error::Error for NotRegularFile {}

/// Why [`open_regular`] refused a name, as one of `internal_events::REFUSALS`: `symlink` (the
/// name is a symbolic link, refused by `O_NOFOLLOW` with `ELOOP`) or `not_regular_file`;
/// `None` for any other error (the name vanished, a permission, an I/O error).
pub fn refusal(error: &io::Error) -> Option<&'static str> {
    if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        Some("symlink")
    } else if error
        .get_ref()
        .is_some_and(|inner| inner.is::<NotRegularFile>())
    {
        Some("not_regular_file")
    } else {
        None
    }
}
