//! Discovery: which files in the input directory are ready to load, oldest first. inotify
//! (through `notify`) announces files the moment they are renamed into the directory or closed
//! after writing; a periodic rescan catches everything else (files present at start-up, missed
//! events, filesystems without inotify).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

/// A file that may be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Full path.
    pub path: PathBuf,
    /// File name, for the ledger and logs.
    pub name: String,
    /// Size when listed.
    pub size: u64,
    /// When it landed: its modification time, or, for a modification time in the future (a
    /// producer's clock ahead of ours, a copy that kept a future time), when it was first seen
    /// as it is.
    pub modified: SystemTime,
}

/// A file first seen with a modification time in the future.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FutureModified {
    /// File name.
    pub name: String,
    /// Its modification time.
    pub modified: SystemTime,
}

/// What a file with a future modification time looked like when first seen (size and mtime),
/// and when that was.
type FirstSeen = Mutex<HashMap<OsString, ((u64, SystemTime), SystemTime)>>;

/// Names inotify announced as complete, with when, shared with the watcher's thread. A std
/// mutex: it is never held across an await.
type Announced = Arc<Mutex<HashMap<OsString, Instant>>>;

/// The input directory, watched.
pub struct Discovery {
    dir: PathBuf,
    settle: Duration,
    announced: Announced,
    /// Files with a future modification time, for the time they count as landed: measured
    /// from that mtime, their age would be 0 (no backlog alert ever fires) and an unannounced
    /// one would never have settled, so it would never be loaded.
    first_seen: FirstSeen,
    /// Names refused (see [`NotRegular`]) and reported, with what they held; a std mutex,
    /// never held across an await.
    refused: Mutex<HashMap<String, &'static str>>,
    wake: Arc<watch::Sender<u64>>,
    watching: Arc<AtomicBool>,
    _watcher: Option<RecommendedWatcher>,
}

impl Discovery {
    /// Starts watching `dir`.
    ///
    /// # Errors
    /// When `dir` does not exist, is not a directory or cannot be listed: a start-up error,
    /// because a wrong path would otherwise look like an idle service.
    pub fn start(dir: &Path, settle: Duration) -> anyhow::Result<Self> {
        Self::open(dir, settle, true)
    }

    /// Lists `dir` without watching it, for readers of the backlog (`/status`, `ingestor
    /// status`): an inotify instance is a scarce per-user resource (128 by default), and only
    /// the loader needs to be woken.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn unwatched(dir: &Path, settle: Duration) -> anyhow::Result<Self> {
        Self::open(dir, settle, false)
    }

    fn open(dir: &Path, settle: Duration, watched: bool) -> anyhow::Result<Self> {
        let metadata = std::fs::metadata(dir)
            .with_context(|| format!("input directory {} is not accessible", dir.display()))?;
        anyhow::ensure!(
            metadata.is_dir(),
            "input directory {} is not a directory",
            dir.display()
        );
        std::fs::read_dir(dir)
            .with_context(|| format!("input directory {} cannot be listed", dir.display()))?;
        let announced = Announced::default();
        let wake = Arc::new(watch::Sender::new(0));
        let watching = Arc::new(AtomicBool::new(false));
        let watcher = match watched.then(|| watch(dir, announced.clone(), wake.clone())) {
            None => None,
            Some(Ok(watcher)) => {
                watching.store(true, Ordering::Relaxed);
                Some(watcher)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, dir = %dir.display(), "No inotify on the input directory; relying on periodic rescans");
                None
            }
        };
        Ok(Discovery {
            dir: dir.to_owned(),
            settle,
            announced,
            first_seen: FirstSeen::default(),
            refused: Mutex::default(),
            wake,
            watching,
            _watcher: watcher,
        })
    }

    /// A receiver that is notified whenever the watcher sees a change; each loader loop holds
    /// its own, so every loop wakes (a `Notify` would wake only one of them).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Whether inotify is active (rescans run either way).
    pub fn is_watching(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }

    /// The ready files, oldest first, and all files waiting (ready or settling).
    ///
    /// # Errors
    /// When the directory cannot be listed.
    pub fn scan(&self) -> std::io::Result<Scan> {
        let now = SystemTime::now();
        let listed_at = Instant::now();
        let mut waiting = Vec::new();
        let mut refused = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let Ok(entry) = entry else { continue };
            match listed(&entry) {
                Listed::Candidate(candidate) => waiting.push(candidate),
                Listed::Refused(name) => refused.push(name),
                Listed::Ignored => {}
            }
        }
        let refused = self.newly_refused(refused);
        let future = self.landed_when_first_seen(&mut waiting, now);
        waiting.sort_by(|a, b| (a.modified, &a.name).cmp(&(b.modified, &b.name)));
        let present: HashSet<&OsStr> = waiting.iter().filter_map(|c| c.path.file_name()).collect();
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        // Forget names that are gone, but only those announced before this listing began: a
        // file renamed in while the directory was being read may be missing from the listing,
        // and forgetting its announcement would make it wait out `settle` on the next scan.
        announced.retain(|name, at| present.contains(name.as_os_str()) || *at >= listed_at);
        let ready = waiting
            .iter()
            .filter(|c| {
                c.path
                    .file_name()
                    .is_some_and(|n| announced.contains_key(n))
                    || now.duration_since(c.modified).unwrap_or_default() >= self.settle
            })
            .cloned()
            .collect();
        Ok(Scan {
            ready,
            waiting,
            future,
            refused,
        })
    }

    /// Records that `name` was refused as `kind` when it was opened (swapped after a scan), so
    /// that it is reported once: `true` if it is to be reported now, `false` if a scan (or
    /// another loader) already did.
    pub fn mark_refused(&self, name: &str, kind: &'static str) -> bool {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), kind)
            != Some(kind)
    }

    /// Of the names that hold no regular file, those not reported before as they are now: each
    /// is reported once, not at every scan, and again if it changes (a FIFO replaced by a link).
    fn newly_refused(&self, now: Vec<NotRegular>) -> Vec<NotRegular> {
        let mut reported = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let present: HashSet<&str> = now.iter().map(|r| r.name.as_str()).collect();
        reported.retain(|name, _| present.contains(name.as_str()));
        now.into_iter()
            .filter(|r| reported.insert(r.name.clone(), r.kind) != Some(r.kind))
            .collect()
    }

    /// Gives each file whose modification time is ahead of `now` the time it was first seen as
    /// it is (same size and mtime; a change counts as a new landing, as a write would) as its
    /// landing time; returns the files seen so for the first time, to be reported once.
    fn landed_when_first_seen(
        &self,
        waiting: &mut [Candidate],
        now: SystemTime,
    ) -> Vec<FutureModified> {
        let mut first_seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut future = Vec::new();
        let mut present = HashSet::new();
        for candidate in waiting.iter_mut().filter(|c| c.modified > now) {
            let Some(name) = candidate.path.file_name() else {
                continue;
            };
            present.insert(name.to_owned());
            let looks = (candidate.size, candidate.modified);
            let landed = match first_seen.get(name) {
                Some((seen, at)) if *seen == looks => *at,
                _ => {
                    first_seen.insert(name.to_owned(), (looks, now));
                    future.push(FutureModified {
                        name: candidate.name.clone(),
                        modified: candidate.modified,
                    });
                    now
                }
            };
            candidate.modified = landed;
        }
        first_seen.retain(|name, _| present.contains(name));
        future
    }
}

/// One look at the directory.
#[derive(Debug, Default)]
pub struct Scan {
    /// Files to load now, oldest first.
    pub ready: Vec<Candidate>,
    /// Every event file present (for backlog metrics).
    pub waiting: Vec<Candidate>,
    /// Files seen for the first time with a modification time in the future.
    pub future: Vec<FutureModified>,
    /// Event file names seen for the first time holding a symbolic link or no regular file.
    pub refused: Vec<NotRegular>,
}

/// An event file name (`*.csv`) that holds a symbolic link, a FIFO, a socket, a device or a
/// directory: never opened (a FIFO would block a reader, a link would read a file from outside
/// the directory), and reported, since a producer meant to deliver something there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRegular {
    /// File name.
    pub name: String,
    /// One of `internal_events::REFUSALS`.
    pub kind: &'static str,
}

/// What a directory entry is to the loader.
enum Listed {
    Candidate(Candidate),
    Refused(NotRegular),
    Ignored,
}

/// Event files are visible regular files ending in `.csv`; hidden names are temp files. An
/// event file name holding anything else is refused (its type is read without following a link
/// or opening anything, so a FIFO cannot block the scan).
fn listed(entry: &std::fs::DirEntry) -> Listed {
    let name = entry.file_name();
    let text = name.to_string_lossy();
    if text.starts_with('.') || !text.to_ascii_lowercase().ends_with(".csv") {
        return Listed::Ignored;
    }
    // `DirEntry::metadata` does not follow symbolic links.
    let Ok(metadata) = entry.metadata() else {
        return Listed::Ignored;
    };
    if !metadata.is_file() {
        return Listed::Refused(NotRegular {
            name: text.into_owned(),
            kind: if metadata.file_type().is_symlink() {
                "symlink"
            } else {
                "not_regular_file"
            },
        });
    }
    Listed::Candidate(Candidate {
        path: entry.path(),
        name: text.into_owned(),
        size: metadata.len(),
        modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

fn watch(
    dir: &Path,
    announced: Announced,
    wake: Arc<watch::Sender<u64>>,
) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let complete = matches!(
            event.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if complete {
            let at = Instant::now();
            let mut set = announced.lock().unwrap_or_else(|e| e.into_inner());
            set.extend(
                event
                    .paths
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| (OsString::from(n), at))),
            );
        }
        if complete || matches!(event.kind, EventKind::Create(_)) {
            wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A file nobody announced, with a modification time in the future, lands when it is first
    /// seen: it settles from then (so it is loaded) and its age grows from then (so it shows).
    #[test]
    fn a_future_modification_time_counts_as_landed_when_first_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ahead.csv");
        std::fs::write(&path, "x").unwrap();
        let ahead = SystemTime::now() + Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(ahead)
            .unwrap();
        let waiting = Discovery::start(dir.path(), Duration::from_secs(3600)).unwrap();
        let before = SystemTime::now();

        let first = waiting.scan().unwrap();
        let second = waiting.scan().unwrap();

        assert!(first.ready.is_empty(), "{first:?}");
        let landed = first.waiting[0].modified;
        assert!(landed >= before && landed <= SystemTime::now(), "{first:?}");
        assert_eq!(second.waiting[0].modified, landed, "first seen, not last");
        assert_eq!(first.future.len(), 1);
        assert_eq!(first.future[0].modified, ahead);
        assert!(second.future.is_empty(), "reported once");
        let settled = Discovery::start(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(settled.scan().unwrap().ready.len(), 1);
    }

    /// An event file name holding no regular file is reported by the first scan that lists it
    /// so, not by the next ones, and again once it holds another kind of thing.
    #[test]
    fn names_holding_no_regular_file_are_reported_once_while_they_stay_so() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link.csv")).unwrap();
        std::fs::create_dir(dir.path().join("folder.csv")).unwrap();
        std::fs::create_dir(dir.path().join(".hidden.csv")).unwrap();
        let discovery = Discovery::unwatched(dir.path(), Duration::ZERO).unwrap();
        let kinds = |scan: Scan| {
            let mut refused: Vec<(String, &str)> =
                scan.refused.into_iter().map(|r| (r.name, r.kind)).collect();
            refused.sort();
            refused
        };

        let first = discovery.scan().unwrap();
        assert!(first.waiting.is_empty(), "{first:?}");
        assert_eq!(
            kinds(first),
            [
                ("folder.csv".to_owned(), "not_regular_file"),
                ("link.csv".to_owned(), "symlink")
            ]
        );
        assert!(
            discovery.scan().unwrap().refused.is_empty(),
            "reported once"
        );
        std::fs::remove_file(dir.path().join("link.csv")).unwrap();
        std::fs::create_dir(dir.path().join("link.csv")).unwrap();
        assert_eq!(
            kinds(discovery.scan().unwrap()),
            [("link.csv".to_owned(), "not_regular_file")]
        );
        assert!(!discovery.mark_refused("folder.csv", "not_regular_file"));
        assert!(discovery.mark_refused("swapped.csv", "symlink"));
    }

    /// A file renamed in while the directory is being listed can be missing from that listing
    /// although its announcement already arrived. The scan must keep such an announcement (so the
    /// file is ready on the next scan) and forget only those of files gone before it began.
    #[test]
    fn a_scan_keeps_announcements_newer_than_its_listing() {
        let dir = tempfile::tempdir().unwrap();
        let discovery = Discovery::start(dir.path(), Duration::from_secs(3600)).unwrap();
        let before = Instant::now();
        {
            let mut announced = discovery.announced.lock().unwrap();
            announced.insert("gone.csv".into(), before);
            announced.insert("racing.csv".into(), before + Duration::from_secs(5));
        }
        discovery.scan().unwrap();
        {
            let announced = discovery.announced.lock().unwrap();
            assert!(!announced.contains_key(OsStr::new("gone.csv")));
            assert!(announced.contains_key(OsStr::new("racing.csv")));
        }
        // The racing file shows up in the next listing and is ready at once, without settling.
        std::fs::write(dir.path().join("racing.csv"), "x").unwrap();
        let scan = discovery.scan().unwrap();
        assert_eq!(scan.ready.len(), 1, "{scan:?}");
        assert_eq!(scan.ready[0].name, "racing.csv");
    }
}
