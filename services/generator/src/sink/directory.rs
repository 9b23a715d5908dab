//! The directory sink, publishing files atomically: write under a hidden temp name in the
//! output directory, fsync, then rename it to its final name (never replacing another file), so
//! a reader never sees a partial file and a crash never leaves a visible one.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::Utc;
use event_contract::EventWriter;

use crate::internal_events::{
    FileDiscarded, FilePublished, Metrics, StaleTempFileRemoved, TempFileNotRemoved,
};
use crate::rows::Row;
use crate::summary::RowCounts;

use super::{Sink, Stopped};

/// Prefix of temp files: hidden (leading dot), so watchers ignore them.
const TEMP_PREFIX: &str = ".events_";
/// Suffix of temp files.
const TEMP_SUFFIX: &str = ".csv.tmp";
/// Write buffer: large enough that a 1,000-row file is a handful of syscalls.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// How often to retry a final name that another writer took in the same millisecond.
const NAME_ATTEMPTS: u32 = 1_000;

/// The output directory and the sequence number of the next file.
pub struct FileSink {
    dir: PathBuf,
    next_seq: u64,
}

/// A file being written; it becomes visible only through [`PendingFile::publish`]. Dropping it
/// without publishing removes the temp file.
pub struct PendingFile {
    writer: Option<EventWriter<BufWriter<File>>>,
    temp_path: PathBuf,
    seq: u64,
}

impl FileSink {
    /// Opens (creating if needed) the output directory and removes temp files a killed
    /// generator left behind.
    ///
    /// # Errors
    /// When the directory cannot be created or listed.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
        for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry
                .with_context(|| format!("cannot list {}", dir.display()))?
                .path();
            if is_temp_file(&path) && !written_by_live_process(&path) {
                StaleTempFileRemoved { path: &path }.emit();
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove stale temp file {}", path.display()))?;
            }
        }
        Ok(FileSink {
            dir: dir.to_owned(),
            next_seq: 1,
        })
    }

    /// Starts the next file under a hidden temp name.
    ///
    /// # Errors
    /// When the temp file cannot be created or its header written.
    pub fn begin(&mut self) -> anyhow::Result<PendingFile> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let temp_path = self.dir.join(format!(
            "{TEMP_PREFIX}{}_{seq:06}{TEMP_SUFFIX}",
            std::process::id()
        ));
        let file = File::create(&temp_path)
            .with_context(|| format!("cannot create {}", temp_path.display()))?;
        let mut pending = PendingFile {
            writer: None,
            temp_path,
            seq,
        };
        let writer = EventWriter::new(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file))
            .with_context(|| format!("cannot write header to {}", pending.temp_path.display()))?;
        pending.writer = Some(writer);
        Ok(pending)
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl PendingFile {
    /// The writer for this file's rows.
    ///
    /// # Errors
    /// Only after a failed publish, which consumes the file; kept fallible to avoid a panic path.
    pub fn writer(&mut self) -> anyhow::Result<&mut EventWriter<BufWriter<File>>> {
        self.writer.as_mut().context("file was already closed")
    }

    /// Flushes, fsyncs, links the file to `events_<UTC yyyymmddThhmmss.fff>_<seq>.csv` (never
    /// replacing an existing file), removes the temp name and fsyncs the directory.
    ///
    /// # Errors
    /// On any I/O failure; the temp file is removed when the [`PendingFile`] drops.
    pub fn publish(mut self, dir: &Path) -> anyhow::Result<PathBuf> {
        let writer = self.writer.take().context("file was already closed")?;
        let file = writer
            .into_inner()
            .and_then(|buffered| buffered.into_inner().map_err(|e| e.into_error()))
            .with_context(|| format!("cannot flush {}", self.temp_path.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", self.temp_path.display()))?;
        drop(file);
        let final_path = self.link_to_final_name(dir)?;
        sync_dir(dir)?;
        Ok(final_path)
    }

    fn link_to_final_name(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        for _ in 0..NAME_ATTEMPTS {
            let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3f");
            let final_path = dir.join(format!("events_{stamp}_{:06}.csv", self.seq));
            match publish_no_replace(&self.temp_path, &final_path) {
                Ok(()) => return Ok(final_path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot publish {}", final_path.display()))
                }
            }
        }
        anyhow::bail!(
            "no free file name for sequence {} after {NAME_ATTEMPTS} attempts",
            self.seq
        )
    }
}

/// Moves `from` to `to` atomically without ever replacing an existing `to`, so two generators
/// sharing a directory cannot overwrite each other's unread files (plain rename(2) would).
///
/// `renameat2(RENAME_NOREPLACE)` is preferred: watchers see it as a rename into the directory
/// (`IN_MOVED_TO`), the signal that a file is complete. Filesystems without that flag get a hard
/// link (also atomic and never replacing) and the temp name is removed afterwards.
fn publish_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.temp_path.exists() {
            if let Err(e) = fs::remove_file(&self.temp_path) {
                TempFileNotRemoved {
                    path: &self.temp_path,
                    error: &e,
                }
                .emit();
            }
        }
    }
}

/// Makes the directory entry durable: without it a crash right after publishing could lose the
/// file's name even though its data was fsynced.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

/// The directory sink: one file per batch, published when the batch is complete and discarded
/// when the run stops in the middle of one.
pub struct DirectorySink {
    files: FileSink,
    pending: Option<PendingFile>,
    metrics: Metrics,
}

impl DirectorySink {
    /// Opens the output directory (see [`FileSink::open`]); `metrics` counts published files.
    ///
    /// # Errors
    /// When the directory cannot be created or listed.
    pub fn open(dir: &Path, metrics: Metrics) -> anyhow::Result<Self> {
        Ok(DirectorySink {
            files: FileSink::open(dir)?,
            pending: None,
            metrics,
        })
    }
}

impl Sink for DirectorySink {
    fn begin(&mut self) -> anyhow::Result<()> {
        self.pending = Some(self.files.begin()?);
        Ok(())
    }

    fn write(&mut self, row: &Row) -> anyhow::Result<()> {
        let writer = self
            .pending
            .as_mut()
            .context("no file in progress")?
            .writer()?;
        match row {
            Row::Valid { event, .. } | Row::Duplicate(event) => writer.write_event(event),
            Row::Invalid { fields, .. } => writer.write_raw(fields),
        }
        .context("cannot write row")
    }

    fn publish(
        &mut self,
        counts: &RowCounts,
        _cancel: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let pending = self.pending.take().context("no file in progress")?;
        let path = pending.publish(self.files.dir())?;
        // One stat per file; a failure only loses the byte count, never the file.
        let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        FilePublished {
            path: &path,
            counts,
            bytes,
        }
        .emit(&self.metrics);
        Ok(())
    }

    fn stop(&mut self, counts: &RowCounts) -> anyhow::Result<Stopped> {
        // Dropping the pending file removes its temp name: nothing half-written is ever seen.
        if self.pending.take().is_some() {
            FileDiscarded { rows: counts.rows }.emit();
        }
        Ok(Stopped::Discarded)
    }
}

/// Whether the temp file's writer (its pid is in the name) is still running: another generator
/// sharing the directory must keep its file in progress.
fn written_by_live_process(path: &Path) -> bool {
    let pid = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(TEMP_PREFIX))
        .and_then(|rest| rest.split('_').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    match pid {
        Some(pid) if pid == std::process::id() => false,
        Some(pid) => Path::new("/proc").join(pid.to_string()).exists(),
        None => false,
    }
}

/// Whether `path` is one of our temp files.
pub fn is_temp_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(TEMP_PREFIX) && n.ends_with(TEMP_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_file_appears_complete_under_its_final_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(dir.path()).unwrap();
        let mut pending = sink.begin().unwrap();
        pending.writer().unwrap().write_raw(["a", "b"]).unwrap();
        let listed = || fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            listed(),
            1,
            "only the hidden temp file exists while writing"
        );
        let path = pending.publish(dir.path()).unwrap();
        assert_eq!(listed(), 1, "the temp name is gone after publishing");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("events_") && name.ends_with("_000001.csv"),
            "{name}"
        );
        assert!(fs::read_to_string(&path).unwrap().ends_with("a,b\n"));
    }

    #[test]
    fn a_dropped_file_leaves_nothing_behind_and_stale_temps_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(dir.path()).unwrap();
        drop(sink.begin().unwrap());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // A dead writer's temp file is removed; a live one's (pid 1 always runs) is kept.
        let dead = dir
            .path()
            .join(format!(".events_{}_000001.csv.tmp", u32::MAX));
        let live = dir.path().join(".events_1_000001.csv.tmp");
        fs::write(&dead, "x").unwrap();
        fs::write(&live, "x").unwrap();
        FileSink::open(dir.path()).unwrap();
        assert!(!dead.exists() && live.exists());
    }
}
