//! `ingestor reset --yes`: the old pipelines' reset utility, made safe. It refuses while an
//! ingestor runs on the database (found by its presence lock, see `store::presence`: it would
//! load into the tables being emptied, and remember ids that are gone), empties everything in
//! one transaction, and can move archived files back for a full re-load.

use anyhow::Context;

use crate::config::Settings;
use crate::store::{connect_once, ledger, presence};

/// Empties events, ledger and rejections; optionally restores archived files.
///
/// # Errors
/// Without `--yes`, while ingestors are connected, without TRUNCATE privilege, or on I/O errors.
pub async fn run(settings: &Settings, yes: bool, restore_archived: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        yes,
        "reset deletes every loaded event, the ledger and all rejected rows; add --yes to confirm"
    );
    let mut client = connect_once(settings, "ingestor-reset").await?;
    // Held until this session ends, so no ingestor can start loading during the reset.
    anyhow::ensure!(
        presence::lock_out_ingestors(&client).await?,
        "an ingestor is running on this database (it holds the presence lock); stop the \
         ingestors first"
    );
    ledger::empty_everything(&mut client).await?;
    println!("emptied events, rejected_rows, ingest_files and pruned_files");
    if restore_archived {
        let moved = restore(settings)?;
        println!(
            "moved {moved} archived file(s) back into {}",
            settings.input_dir.display()
        );
    }
    Ok(())
}

/// Moves archived files back into the input directory (skipping names already present there).
fn restore(settings: &Settings) -> anyhow::Result<usize> {
    let Ok(entries) = std::fs::read_dir(&settings.archive_dir) else {
        return Ok(0);
    };
    let mut moved = 0;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", settings.archive_dir.display()))?
            .path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = settings.input_dir.join(name);
        if path.is_file() && !target.exists() {
            std::fs::rename(&path, &target)
                .with_context(|| format!("cannot move {} back", path.display()))?;
            moved += 1;
        }
    }
    Ok(moved)
}
