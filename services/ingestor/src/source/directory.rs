//! The directory source: ready files of the input directory are the units of work, a file's
//! content identity is its ledger key, and acknowledging a file after COMMIT moves it (archive,
//! delete or failed directory) if its name still holds the file that was read.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tokio_postgres::Transaction;

use super::lifecycle::{self, Finished};
use super::reader::{self, OpenedFile, ReadMessage, ReadOptions};
use super::{refusal, Candidate, Discovery, NotOpened, Opened, Scan, Source, Unit};
use crate::config::Settings;
use crate::internal_events::{
    BacklogObserved, DirectoryUnlistable, FileChanged, FileMovedAs, FileRefused, FileVanished,
    FutureModificationTimeSeen, Metrics,
};
use crate::model::{FileFailure, FileIdentity, FileStamp, LedgerStatus, Settled};
use crate::store::ledger::{self, Claim};

/// The input directory as a source of work.
pub struct DirectorySource {
    discovery: Discovery,
    settings: Arc<Settings>,
}

impl DirectorySource {
    /// The source over `discovery`; `settings` say where finished files go.
    pub fn new(discovery: Discovery, settings: Arc<Settings>) -> Self {
        DirectorySource {
            discovery,
            settings,
        }
    }
}

impl Source for DirectorySource {
    type Unit = Candidate;

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.discovery.subscribe()
    }

    fn ready(&self, metrics: &Metrics) -> Vec<Candidate> {
        let scan = self.discovery.scan().unwrap_or_else(|e| {
            DirectoryUnlistable { error: &e }.emit(metrics);
            Scan::default()
        });
        report_scan(&scan, metrics);
        scan.ready
    }

    fn report_backlog(&self, metrics: &Metrics) {
        // A listing error is logged by the loader loops, which scan as often.
        if let Ok(scan) = self.discovery.scan() {
            report_scan(&scan, metrics);
            observe_backlog(&scan, metrics);
        }
    }

    fn acknowledge(
        &self,
        unit: &Candidate,
        settled: Settled<'_, FileStamp>,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        let settings = &self.settings;
        let path = &unit.path;
        let (file_id, moved) = match settled {
            Settled::Loaded { file_id, read }
            | Settled::Known {
                file_id,
                status: LedgerStatus::Loaded | LedgerStatus::Loading,
                read,
            } => (
                file_id,
                lifecycle::after_loaded(settings, metrics, path, read, file_id)?,
            ),
            Settled::Failed { file_id, read }
            | Settled::Known {
                file_id,
                status: LedgerStatus::Failed,
                read,
            } => (
                file_id,
                lifecycle::after_failed(settings, metrics, path, read, file_id)?,
            ),
            Settled::Refused { kind, message } => {
                // Reported once, whether a scan or this open found it first.
                if self.discovery.mark_refused(&unit.name, kind) {
                    FileRefused {
                        name: &unit.name,
                        kind,
                        message,
                    }
                    .emit(metrics);
                }
                return Ok(());
            }
            Settled::Untouched => return Ok(()),
        };
        report_move(metrics, unit, file_id, &moved);
        Ok(())
    }
}

impl Unit for Candidate {
    type Key = PathBuf;
    type Opened = OpenedCandidate;

    fn key(&self) -> PathBuf {
        self.path.clone()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn landed(&self) -> SystemTime {
        self.modified
    }

    fn open(&self) -> Result<OpenedCandidate, NotOpened> {
        match reader::open(&self.path) {
            Ok(file) => Ok(OpenedCandidate {
                name: self.name.clone(),
                landed: self.modified,
                file,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(NotOpened::Vanished),
            // Swapped after the scan for a link or a FIFO or device: never read through it.
            Err(e) => Err(match refusal(&e) {
                Some(kind) => NotOpened::Refused {
                    kind,
                    message: e.to_string(),
                },
                None => NotOpened::Retry(format!("cannot read: {e}")),
            }),
        }
    }
}

/// A candidate opened and hashed: the one descriptor its rows are read through.
#[derive(Debug)]
pub struct OpenedCandidate {
    name: String,
    landed: SystemTime,
    file: OpenedFile,
}

impl Opened for OpenedCandidate {
    type Receipt = FileStamp;

    fn identity(&self) -> FileIdentity {
        self.file.identity
    }

    fn receipt(&self) -> FileStamp {
        self.file.stamp
    }

    async fn claim(&self, tx: &Transaction<'_>, instance: &str) -> anyhow::Result<Claim> {
        ledger::claim(tx, &self.file.identity, &self.name, self.landed, instance).await
    }

    async fn record_failed(
        &self,
        tx: &Transaction<'_>,
        instance: &str,
        failure: &FileFailure,
    ) -> anyhow::Result<i64> {
        let identity = &self.file.identity;
        ledger::record_failed(tx, identity, &self.name, self.landed, instance, failure).await
    }

    fn read_rows(&self, options: ReadOptions, sender: &mpsc::Sender<ReadMessage>) {
        // `&File` reads and seeks the one descriptor that was hashed.
        reader::read_rows(&self.file.file, options, sender);
    }
}

/// Reports a name that no longer held the file that was read (left in place, to be loaded as a
/// new file), that was gone, or that was taken in the target directory; a move or deletion that
/// went as planned is not worth a log line of its own.
fn report_move(metrics: &Metrics, candidate: &Candidate, file_id: i64, moved: &Finished) {
    match moved {
        Finished::Changed(change) => FileChanged {
            name: &candidate.name,
            file_id,
            change: *change,
        }
        .emit(metrics),
        Finished::Gone => FileVanished {
            name: &candidate.name,
            file_id,
        }
        .emit(metrics),
        Finished::Moved(to) if to.file_name() != candidate.path.file_name() => {
            FileMovedAs {
                name: &candidate.name,
                file_id,
                to,
            }
            .emit();
        }
        Finished::Moved(_) | Finished::Deleted => {}
    }
}

/// What a scan found that is not work: names holding no regular file (reported once each by
/// the scan) and files first seen with a modification time in the future (each is in one
/// scan's list only, whichever loop listed it first).
fn report_scan(scan: &Scan, metrics: &Metrics) {
    for file in &scan.refused {
        FileRefused {
            name: &file.name,
            kind: file.kind,
            message: "listed so by the scan; left as it is, never opened",
        }
        .emit(metrics);
    }
    for file in &scan.future {
        FutureModificationTimeSeen {
            name: &file.name,
            modified: file.modified,
        }
        .emit(metrics);
    }
}

fn observe_backlog(scan: &Scan, metrics: &Metrics) {
    BacklogObserved {
        files: scan.waiting.len(),
        bytes: scan.waiting.iter().map(|c| c.size).sum(),
        oldest_landed: scan
            .waiting
            .first()
            .map_or_else(SystemTime::now, |c| c.modified),
    }
    .emit(metrics);
}
