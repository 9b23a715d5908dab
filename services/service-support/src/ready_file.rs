//! The ready file: where a service tells whoever started it the address it bound.
//!
//! Tests, `scripts/stack` and `scripts/bench` start the services on port 0 so that runs never
//! collide, and need the port that was picked. Reading it from a log line couples them to the
//! log format; a file named on the command line (`--ready-file`) is a contract of its own.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a ready file holds: one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyFile {
    /// The bound HTTP address, e.g. `127.0.0.1:41234`.
    pub listen: SocketAddr,
    /// The process that bound it.
    pub pid: u32,
}

impl ReadyFile {
    /// This process, listening on `listen`.
    pub fn for_this_process(listen: SocketAddr) -> Self {
        ReadyFile {
            listen,
            pid: std::process::id(),
        }
    }

    /// Writes the file atomically (a temporary file in the same directory, then a rename), so a
    /// reader polling for it never sees it half-written.
    ///
    /// # Errors
    /// When the directory is not writable; the error names the path.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let temporary = temporary_path(path);
        let body = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let written = std::fs::File::create(&temporary).and_then(|mut file| {
            file.write_all(&body)?;
            file.write_all(b"\n")
        });
        written
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temporary);
                std::io::Error::new(
                    e.kind(),
                    format!("cannot write the ready file {}: {e}", path.display()),
                )
            })
    }

    /// Reads a ready file; `None` while it does not exist yet.
    ///
    /// # Errors
    /// When it exists but cannot be read or is not a ready file.
    pub fn read(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(body) => serde_json::from_slice(&body).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a ready file: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_written_ready_file_reads_back_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        assert_eq!(ReadyFile::read(&path).unwrap(), None);
        let ready = ReadyFile::for_this_process("127.0.0.1:4321".parse().unwrap());
        ready.write(&path).unwrap();
        assert_eq!(ReadyFile::read(&path).unwrap(), Some(ready));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_unwritable_directory_is_named_in_the_error() {
        let path = Path::new("/nonexistent-dir/ready.json");
        let error = ReadyFile::for_this_process("127.0.0.1:1".parse().unwrap())
            .write(path)
            .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent-dir/ready.json"),
            "{error}"
        );
    }
}
