//! What happens to a file after its transaction: archived, deleted or moved to the failed
//! directory. These steps run after COMMIT; if the process dies in between, the next scan finds
//! the file again, the ledger says it is done, and the step is simply repeated.
//!
//! Two rules make the step safe against producers that keep writing:
//! - **Only the file that was read leaves the input directory.** A name is not a file: between
//!   the read and the move, a producer may rename new content onto it, append to it or rewrite
//!   it. The move therefore compares the name with the [`FileStamp`] taken when the file was
//!   opened (device, inode, size, mtime), and leaves a name that differs: it holds bytes that
//!   were never loaded, and the next scan loads them as a new file (rows already stored count as
//!   duplicates). A check and a rename are two system calls, so what arrived is checked again
//!   after the rename, and a file swapped in between the two is put back.
//! - **Nothing in the archive or failed directory is ever replaced.** Every rename into them
//!   (and every move back) is a no-replace rename, so a name that is taken means "try the next
//!   name", never "overwrite".
//! - **"Not found" is never success.** A rename fails with `ENOENT` when the file's name is gone
//!   *or* when the target directory is (deleted by hand, or with the input directory it lives
//!   in). The two are told apart: a missing directory is created again (and reported) and the
//!   move goes ahead; a name that is gone is reported as such, never taken for a move that
//!   happened.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use rustix::fs::{renameat_with, RenameFlags, CWD};

use super::open_regular;
use crate::config::{resolved, AfterLoad, Settings};
use crate::internal_events::{DirectoryRecreated, Metrics};
use crate::model::{FileChange, FileStamp};

/// Names tried in a directory before giving up: `name`, `stem.<id>.ext`, `stem.<id>.2.ext`, …
/// Only a directory already holding that many files of one name and id exhausts them.
const NAME_ATTEMPTS: u64 = 1_000;

/// What the step after COMMIT did with a file's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Moved to this path.
    Moved(PathBuf),
    /// Deleted (`after_load = "delete"`).
    Deleted,
    /// The name was already gone: another replica moved it, or someone removed it (or the
    /// directory holding it). Nothing was moved; callers report it.
    Gone,
    /// The name no longer holds the file that was read; it was left where it is, to be loaded
    /// as a new file.
    Changed(FileChange),
}

/// Moves or deletes a loaded file as configured, if `path` still is the file `read`.
///
/// # Errors
/// When the file exists but cannot be moved or deleted.
pub fn after_loaded(
    settings: &Settings,
    metrics: &Metrics,
    path: &Path,
    read: &FileStamp,
    file_id: i64,
) -> anyhow::Result<Finished> {
    match settings.after_load {
        AfterLoad::Archive => move_into(metrics, path, read, &settings.archive_dir, file_id),
        AfterLoad::Delete => delete(path, read),
    }
}

/// Moves a file that cannot be loaded to the failed directory, if `path` still is the file
/// `read`.
///
/// # Errors
/// When the file exists but cannot be moved.
pub fn after_failed(
    settings: &Settings,
    metrics: &Metrics,
    path: &Path,
    read: &FileStamp,
    file_id: i64,
) -> anyhow::Result<Finished> {
    move_into(metrics, path, read, &settings.failed_dir, file_id)
}

/// Creates the archive and failed directories, and checks that neither is the input directory.
///
/// Configuration already compares the paths resolved as far as they existed; now that all three
/// exist, their canonical paths are compared once more, so a link or directory that appeared in
/// between cannot turn every move into a rename of a file onto itself.
///
/// # Errors
/// When they cannot be created, or one of them is the input directory.
pub fn prepare_dirs(settings: &Settings) -> anyhow::Result<()> {
    for (key, dir) in [
        ("archive_dir", &settings.archive_dir),
        ("failed_dir", &settings.failed_dir),
    ] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
        let input = resolved(&settings.input_dir);
        anyhow::ensure!(
            resolved(dir) != input,
            "invalid configuration: key `{key}` = `{}`: must differ from input_dir ({}), but both resolve to {}; finished files moved there would be loaded again and again",
            dir.display(),
            settings.input_dir.display(),
            input.display()
        );
    }
    Ok(())
}

/// Where the name stands compared with the file that was read: `Some` to stop (gone or
/// changed), `None` when it still is that very file.
fn check(path: &Path, read: &FileStamp) -> io::Result<Option<Finished>> {
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok(read.change_to(&FileStamp::of(&now)).map(Finished::Changed)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(Finished::Gone)),
        Err(e) => Err(e),
    }
}

/// Moves `path` into `dir`, keeping its name unless another file already has it there (then
/// the ledger id is added: `name.<file_id>.csv`, then `name.<file_id>.2.csv`, …).
fn move_into(
    metrics: &Metrics,
    path: &Path,
    read: &FileStamp,
    dir: &Path,
    file_id: i64,
) -> anyhow::Result<Finished> {
    let Some(name) = path.file_name() else {
        return Ok(Finished::Gone);
    };
    if let Some(stop) =
        check(path, read).with_context(|| format!("cannot stat {}", path.display()))?
    {
        return Ok(stop);
    }
    let mut recreated = false;
    let mut targets = numbered_names(dir, name, file_id);
    let mut next = targets.next();
    while let Some(target) = &next {
        let checked = match rename_or_link(path, target) {
            Ok(NoReplace::Renamed) => verify_moved(path, read, target),
            Ok(NoReplace::Linked) => verify_linked(path, read, target),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                next = targets.next();
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // ENOENT names no culprit: the source name or the target directory.
                if !exists(path).with_context(|| format!("cannot stat {}", path.display()))? {
                    return Ok(Finished::Gone);
                }
                anyhow::ensure!(
                    !recreated,
                    "cannot move {} to {}: the directory keeps disappearing",
                    path.display(),
                    target.display()
                );
                recreate_dir(metrics, dir)?;
                recreated = true;
                // The same name again, in the new directory.
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                return copy_across(metrics, path, read, dir, file_id)
            }
            Err(e) => Err(e),
        };
        return checked
            .with_context(|| format!("cannot move {} to {}", path.display(), target.display()));
    }
    anyhow::bail!(
        "cannot move {}: {NAME_ATTEMPTS} names for it in {} are taken",
        path.display(),
        dir.display()
    )
}

/// Whether a name exists (as anything, a dangling symbolic link included).
fn exists(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates a finished-files directory that has gone missing, and reports it once: when several
/// loops find it missing at the same moment, only the one whose `mkdir` created it reports.
fn recreate_dir(metrics: &Metrics, dir: &Path) -> anyhow::Result<()> {
    let created = match std::fs::create_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        // Its parent is gone too (an archive outside a deleted input directory).
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
            true
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot create directory {}", dir.display()))
        }
    };
    if created {
        DirectoryRecreated { dir }.emit(metrics);
    }
    Ok(())
}

/// After a hard link from `path` to `to` (filesystems without no-replace renames): `to` is a
/// second name of whatever `path` pointed to. Kept if that is the file that was read, and then
/// `path` is removed the safe way; removed again (nobody else writes that fresh name) if not.
fn verify_linked(path: &Path, read: &FileStamp, to: &Path) -> io::Result<Finished> {
    let linked = FileStamp::of(&std::fs::symlink_metadata(to)?);
    if let Some(change) = read.change_to(&linked) {
        std::fs::remove_file(to)?;
        return Ok(Finished::Changed(change));
    }
    match remove_if_read(path, read)? {
        Finished::Changed(change) => Ok(Finished::Changed(change)),
        _ => Ok(Finished::Moved(to.to_owned())),
    }
}

/// After a rename from `from` to `to`: if what arrived is not the file that was read (another
/// file was renamed onto `from` between the check and the rename), it goes back.
fn verify_moved(from: &Path, read: &FileStamp, to: &Path) -> io::Result<Finished> {
    let arrived = FileStamp::of(&std::fs::symlink_metadata(to)?);
    match read.change_to(&arrived) {
        None => Ok(Finished::Moved(to.to_owned())),
        Some(change) => {
            put_back(to, from, &arrived)?;
            Ok(Finished::Changed(change))
        }
    }
}

/// Returns a file that was taken by mistake to the input directory under its name, or (if a
/// newer file took that name meanwhile) under `stem.<inode>.ext`, so that it is loaded.
fn put_back(taken: &Path, path: &Path, stamp: &FileStamp) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("a file name without a directory"));
    };
    for back in numbered_names(dir, name, stamp.ino) {
        match rename_private(taken, &back) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            other => return other,
        }
    }
    Err(io::Error::other(format!(
        "no free name to put {} back into {}",
        taken.display(),
        dir.display()
    )))
}

/// Deletes `path` if it still is the file that was read.
fn delete(path: &Path, read: &FileStamp) -> anyhow::Result<Finished> {
    if let Some(stop) =
        check(path, read).with_context(|| format!("cannot stat {}", path.display()))?
    {
        return Ok(stop);
    }
    remove_if_read(path, read).with_context(|| format!("cannot delete {}", path.display()))
}

/// Removes the name `path` only if it is the file that was read. unlink(2) removes whatever the
/// name points to at that instant, so the name is first renamed to a private one nobody else
/// uses (atomic, and nothing can be renamed onto it), checked there, and only then removed; a
/// file swapped in just before the rename goes back.
fn remove_if_read(path: &Path, read: &FileStamp) -> io::Result<Finished> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a file name without a directory"))?;
    let private = private_name(dir, "taken");
    match std::fs::rename(path, &private) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Finished::Gone),
        other => other?,
    }
    let taken = FileStamp::of(&std::fs::symlink_metadata(&private)?);
    match read.change_to(&taken) {
        None => {
            std::fs::remove_file(&private)?;
            Ok(Finished::Deleted)
        }
        Some(change) => {
            put_back(&private, path, &taken)?;
            Ok(Finished::Changed(change))
        }
    }
}

/// A hidden name in `dir` that only this call uses: scans ignore hidden names, and the process
/// id and a counter keep replicas and loader loops apart. Fixed length, so it fits the 255-byte
/// limit whatever the file is called.
fn private_name(dir: &Path, suffix: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".ingestor-{}-{n}.{suffix}", std::process::id()))
}

/// The move when `dir` is on another filesystem: the bytes are copied from a descriptor that is
/// checked to be the file that was read, into a hidden temp file in `dir` that is synced and
/// then renamed (no-replace) to its final name, so `dir` only ever shows complete copies; the
/// input name is removed last, and only if it still is that file.
fn copy_across(
    metrics: &Metrics,
    path: &Path,
    read: &FileStamp,
    dir: &Path,
    file_id: i64,
) -> anyhow::Result<Finished> {
    let Some(name) = path.file_name() else {
        return Ok(Finished::Gone);
    };
    let mut source = match open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Finished::Gone),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let stamp_of = |file: &File| file.metadata().map(|m| FileStamp::of(&m));
    let opened = stamp_of(&source).with_context(|| format!("cannot stat {}", path.display()))?;
    if let Some(change) = read.change_to(&opened) {
        return Ok(Finished::Changed(change));
    }
    if !exists(dir).with_context(|| format!("cannot stat {}", dir.display()))? {
        recreate_dir(metrics, dir)?;
    }
    let temp = private_name(dir, "part");
    let copied = (|| {
        let mut out = File::create(&temp)?;
        io::copy(&mut source, &mut out)?;
        out.sync_all()?;
        stamp_of(&source)
    })();
    let copied = match copied {
        Ok(stamp) => stamp,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e)
                .with_context(|| format!("cannot copy {} to {}", path.display(), temp.display()));
        }
    };
    // Written to while being copied: the copy is not what was loaded.
    if let Some(change) = read.change_to(&copied) {
        let _ = std::fs::remove_file(&temp);
        return Ok(Finished::Changed(change));
    }
    let mut archived = None;
    for target in numbered_names(dir, name, file_id) {
        match rename_private(&temp, &target) {
            Ok(()) => {
                archived = Some(target);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e).with_context(|| {
                    format!("cannot move {} to {}", temp.display(), target.display())
                });
            }
        }
    }
    let Some(archived) = archived else {
        let _ = std::fs::remove_file(&temp);
        anyhow::bail!(
            "cannot move {}: {NAME_ATTEMPTS} names for it in {} are taken",
            path.display(),
            dir.display()
        );
    };
    match remove_if_read(path, read).with_context(|| format!("cannot remove {}", path.display()))? {
        // The name now holds another file; the copy is still the loaded file's archive.
        Finished::Changed(change) => Ok(Finished::Changed(change)),
        _ => Ok(Finished::Moved(archived)),
    }
}

/// `dir/name`, then `dir/stem.<tag>.ext`, then `dir/stem.<tag>.2.ext`, … ([`NAME_ATTEMPTS`] in
/// all). Each name fits [`NAME_MAX`] bytes: where `stem.<tag>.n.ext` would not, the stem is
/// shortened (the tag, the number and the extension are what keep the names apart, so they
/// stay whole). A name one byte too long would fail every move with `ENAMETOOLONG`, and the
/// file would be claimed again and again without ever leaving the input directory.
fn numbered_names<'a>(
    dir: &'a Path,
    name: &'a OsStr,
    tag: impl std::fmt::Display + 'a,
) -> impl Iterator<Item = PathBuf> + 'a {
    let (stem, ext) = split_extension(name.as_bytes());
    (1..=NAME_ATTEMPTS).map(move |n| {
        if n == 1 {
            return dir.join(name);
        }
        let number = match n {
            2 => format!(".{tag}"),
            n => format!(".{tag}.{}", n - 1),
        };
        let room = NAME_MAX.saturating_sub(number.len() + ext.len());
        let mut numbered = shortened(stem, room).to_vec();
        numbered.extend_from_slice(number.as_bytes());
        numbered.extend_from_slice(ext);
        dir.join(OsStr::from_bytes(&numbered))
    })
}

/// The longest file name Linux filesystems accept, in bytes (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Extensions longer than this are not treated as one: `a.<200 bytes>` keeps its bytes in the
/// stem, where they can be shortened, instead of leaving no room for the stem at all.
const MAX_EXTENSION_BYTES: usize = 16;

/// Splits a file name into stem and extension (with its dot) the way [`Path::extension`] does,
/// on bytes, so that a name that is not UTF-8 keeps its exact bytes.
fn split_extension(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|b| *b == b'.') {
        Some(dot) if dot > 0 && name.len() - dot <= MAX_EXTENSION_BYTES => name.split_at(dot),
        _ => (name, &[]),
    }
}

/// The first at most `room` bytes of `stem`, cut before a character rather than inside one: a
/// UTF-8 name stays UTF-8 (the ledger, the logs and operators read it), and a name that is not
/// UTF-8 keeps its bytes as they were.
fn shortened(stem: &[u8], room: usize) -> &[u8] {
    if stem.len() <= room {
        return stem;
    }
    let mut cut = room;
    // A UTF-8 continuation byte (0b10xxxxxx) at the cut means the cut splits a character.
    while cut > 0 && stem[cut] & 0b1100_0000 == 0b1000_0000 {
        cut -= 1;
    }
    &stem[..cut]
}

/// How a no-replace move went.
enum NoReplace {
    /// `from` was renamed to `to`.
    Renamed,
    /// The filesystem cannot rename without replacing: `to` was hard-linked to `from`, which
    /// still exists.
    Linked,
}

/// Gives `from`'s file the name `to` atomically, failing with `AlreadyExists` instead of
/// replacing an existing `to`: plain rename(2) silently replaces, which in the archive would
/// destroy another file's copy, and in the input directory a newer, unloaded file.
///
/// `renameat2(RENAME_NOREPLACE)` (through `rustix`: already the workspace's system-call crate,
/// what the generator publishes with, and safe code under `unsafe_code = "forbid"`) does it in
/// one step on Linux's local filesystems. A filesystem without that flag gets a hard link, also
/// atomic and never replacing; removing `from` is then left to the caller, because unlink(2)
/// removes whatever the name points to by then.
fn rename_or_link(from: &Path, to: &Path) -> io::Result<NoReplace> {
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(NoReplace::Renamed),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            std::fs::hard_link(from, to)?;
            Ok(NoReplace::Linked)
        }
        Err(e) => Err(e.into()),
    }
}

/// [`rename_or_link`] for a `from` that only this process writes to (a private name, or a file
/// it just archived), which can therefore simply be removed after a link.
fn rename_private(from: &Path, to: &Path) -> io::Result<()> {
    match rename_or_link(from, to)? {
        NoReplace::Renamed => Ok(()),
        NoReplace::Linked => std::fs::remove_file(from),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn stamp(path: &Path) -> FileStamp {
        FileStamp::of(&std::fs::symlink_metadata(path).unwrap())
    }

    fn metrics() -> Metrics {
        Metrics::new().unwrap()
    }

    #[test]
    fn numbered_names_fit_255_bytes_keep_id_and_extension_and_stay_utf8() {
        let dir = Path::new("/archive");
        // 125 two-byte characters + ".csv" = 254 bytes, one byte under the limit.
        let long = format!("{}.csv", "é".repeat(125));
        let names: Vec<PathBuf> = numbered_names(dir, OsStr::new(&long), 123_456)
            .take(12)
            .collect();
        assert_eq!(names[0], dir.join(&long));
        let mut unique = std::collections::HashSet::new();
        for name in &names[1..] {
            let file = name.file_name().unwrap();
            assert!(file.len() <= NAME_MAX, "{} bytes", file.len());
            let text = file.to_str().expect("still UTF-8");
            assert!(text.starts_with("éé"), "{text}");
            assert!(text.ends_with(".csv"), "{text}");
            assert!(text.contains(".123456"), "{text}");
            assert!(unique.insert(file.to_owned()), "{text} twice");
        }
        assert!(names[1].to_str().unwrap().ends_with("é.123456.csv"));
        assert!(names[11].to_str().unwrap().ends_with("é.123456.11.csv"));
    }

    #[test]
    fn numbered_names_of_a_name_that_is_not_utf8_keep_its_bytes() {
        let mut raw = vec![b'x'; 200];
        raw.extend_from_slice(&[0xff, 0xfe]);
        raw.extend(std::iter::repeat_n(b'y', 49));
        raw.extend_from_slice(b".csv");
        assert_eq!(raw.len(), 255);
        let name = OsStr::from_bytes(&raw);
        let numbered: Vec<PathBuf> = numbered_names(Path::new("/a"), name, 7).take(3).collect();
        let second = numbered[1].file_name().unwrap().as_bytes();
        assert_eq!(second.len(), 255);
        assert_eq!(
            &second[..202],
            &raw[..202],
            "the bytes kept are the name's own"
        );
        assert!(second.ends_with(b".7.csv"));
        assert!(numbered[2]
            .file_name()
            .unwrap()
            .as_bytes()
            .ends_with(b".7.2.csv"));
    }

    #[test]
    fn a_long_name_taken_in_the_archive_is_archived_under_a_name_that_fits() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("processed");
        std::fs::create_dir(&archive).unwrap();
        let long = format!("{}.csv", "a".repeat(250));
        std::fs::write(archive.join(&long), "first").unwrap();
        let input = dir.path().join(&long);
        std::fs::write(&input, "second").unwrap();

        let finished = move_into(&metrics(), &input, &stamp(&input), &archive, 42).unwrap();

        let expected = archive.join(format!("{}.42.csv", "a".repeat(248)));
        assert_eq!(finished, Finished::Moved(expected.clone()));
        assert_eq!(std::fs::read_to_string(expected).unwrap(), "second");
        assert_eq!(
            std::fs::read_to_string(archive.join(&long)).unwrap(),
            "first"
        );
    }

    #[test]
    fn a_missing_archive_directory_is_created_again_and_the_move_goes_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("gone").join("processed");
        let input = dir.path().join("a.csv");
        std::fs::write(&input, "loaded").unwrap();
        let metrics = metrics();

        let finished = move_into(&metrics, &input, &stamp(&input), &archive, 1).unwrap();

        assert_eq!(finished, Finished::Moved(archive.join("a.csv")));
        assert!(!input.exists());
        let line = "ingestor_move_faults_total{fault=\"directory_missing\"} 1";
        assert!(metrics.render().lines().any(|l| l == line));
    }

    #[test]
    fn a_name_gone_before_the_move_is_reported_as_gone_not_moved() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("processed");
        let input = dir.path().join("a.csv");
        std::fs::write(&input, "loaded").unwrap();
        let read = stamp(&input);
        std::fs::remove_file(&input).unwrap();

        let finished = move_into(&metrics(), &input, &read, &archive, 1).unwrap();

        assert_eq!(finished, Finished::Gone);
        assert!(
            !archive.exists(),
            "nothing to archive, so no directory made"
        );
    }

    #[test]
    fn a_taken_archive_name_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("processed");
        std::fs::create_dir(&archive).unwrap();
        std::fs::write(archive.join("a.csv"), "first").unwrap();
        std::fs::write(archive.join("a.3.csv"), "second").unwrap();
        let input = dir.path().join("a.csv");
        std::fs::write(&input, "third").unwrap();

        let finished = move_into(&metrics(), &input, &stamp(&input), &archive, 3).unwrap();

        assert_eq!(finished, Finished::Moved(archive.join("a.3.2.csv")));
        assert_eq!(
            std::fs::read_to_string(archive.join("a.csv")).unwrap(),
            "first"
        );
        assert_eq!(
            std::fs::read_to_string(archive.join("a.3.csv")).unwrap(),
            "second"
        );
        assert_eq!(
            std::fs::read_to_string(archive.join("a.3.2.csv")).unwrap(),
            "third"
        );
        assert!(!input.exists());
    }

    #[test]
    fn a_name_that_holds_another_file_is_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("processed");
        std::fs::create_dir(&archive).unwrap();
        let input = dir.path().join("a.csv");
        std::fs::write(&input, "loaded").unwrap();
        let read = stamp(&input);
        let staged = dir.path().join(".new.tmp");
        std::fs::write(&staged, "new").unwrap();
        std::fs::rename(&staged, &input).unwrap();

        let finished = move_into(&metrics(), &input, &read, &archive, 1).unwrap();

        assert_eq!(finished, Finished::Changed(FileChange::Replaced));
        assert_eq!(std::fs::read_to_string(&input).unwrap(), "new");
        assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 0);
    }

    #[test]
    fn a_grown_file_is_neither_moved_nor_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.csv");
        std::fs::write(&input, "loaded").unwrap();
        let read = stamp(&input);
        std::fs::write(&input, "loaded, and more").unwrap();

        let finished = delete(&input, &read).unwrap();

        assert_eq!(finished, Finished::Changed(FileChange::Modified));
        assert!(input.exists());
    }

    #[test]
    fn a_file_swapped_in_after_the_check_goes_back_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.csv");
        std::fs::write(&input, "loaded").unwrap();
        let read = stamp(&input);
        std::fs::write(dir.path().join(".new"), "new").unwrap();
        std::fs::rename(dir.path().join(".new"), &input).unwrap();
        let archived = dir.path().join("a.archived");
        // As if the swap had happened between `check` and the rename.
        std::fs::rename(&input, &archived).unwrap();

        let finished = verify_moved(&input, &read, &archived).unwrap();

        assert_eq!(finished, Finished::Changed(FileChange::Replaced));
        assert_eq!(std::fs::read_to_string(&input).unwrap(), "new");
        assert!(!archived.exists());
    }

    #[test]
    fn deleting_an_unchanged_file_leaves_no_private_name_behind() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.csv");
        std::fs::write(&input, "loaded").unwrap();

        let finished = delete(&input, &stamp(&input)).unwrap();

        assert_eq!(finished, Finished::Deleted);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
