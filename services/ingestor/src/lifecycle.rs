//! What happens to a file after its transaction: archived, deleted or moved to the failed
//! directory. These steps run after COMMIT; if the process dies in between, the next scan finds
//! the file again, the ledger says it is done, and the step is simply repeated.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{AfterLoad, Settings};

/// Moves or deletes a loaded file as configured.
///
/// # Errors
/// When the file exists but cannot be moved or deleted.
pub fn after_loaded(settings: &Settings, path: &Path, file_id: i64) -> anyhow::Result<()> {
    match settings.after_load {
        AfterLoad::Archive => move_into(path, &settings.archive_dir, file_id),
        AfterLoad::Delete => ignore_missing(std::fs::remove_file(path))
            .with_context(|| format!("cannot delete {}", path.display())),
    }
}

/// Moves a file that cannot be loaded to the failed directory.
///
/// # Errors
/// When the file exists but cannot be moved.
pub fn after_failed(settings: &Settings, path: &Path, file_id: i64) -> anyhow::Result<()> {
    move_into(path, &settings.failed_dir, file_id)
}

/// Creates the archive and failed directories.
///
/// # Errors
/// When they cannot be created.
pub fn prepare_dirs(settings: &Settings) -> anyhow::Result<()> {
    for dir in [&settings.archive_dir, &settings.failed_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    Ok(())
}

/// Moves `path` into `dir`, keeping its name unless another file already has it there (then the
/// ledger id is added: `name.<file_id>.csv`). A file already gone was moved by another replica.
fn move_into(path: &Path, dir: &Path, file_id: i64) -> anyhow::Result<()> {
    let Some(name) = path.file_name() else {
        return Ok(());
    };
    let mut target = dir.join(name);
    if target.exists() {
        target = with_id(&target, file_id);
    }
    ignore_missing(rename_or_copy(path, &target))
        .with_context(|| format!("cannot move {} to {}", path.display(), target.display()))
}

fn with_id(target: &Path, file_id: i64) -> PathBuf {
    let stem = target
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = target
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    target.with_file_name(format!("{stem}.{file_id}{ext}"))
}

/// rename(2), or copy + remove when the directories are on different filesystems.
fn rename_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            std::fs::copy(from, to)?;
            std::fs::File::open(to)?.sync_all()?;
            std::fs::remove_file(from)
        }
        other => other,
    }
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
