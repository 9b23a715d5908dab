//! One directory, one database: the input directory remembers which database its files are
//! loaded into, and an ingestor pointed at it with another database refuses to start.
//!
//! Why: replicas share a directory through the ledger's locks, which live in the database. Two
//! ingestors on one directory but different databases (or servers) have no ledger in common, so
//! each takes the files it sees first and archives them: the files end up split between the two
//! databases, and nothing says so. The first ingestor to reach its database writes a marker
//! ([`MARKER_NAME`]) into the input directory naming the database; every later start compares
//! its own database with the marker. Replicas (same database) pass; anything else stops.
//!
//! The database is named by the server's system identifier (`pg_control_system()`, chosen by
//! `initdb` at random and kept for the life of the cluster, also by its physical replicas) and
//! the database name: together they tell two servers apart even when both are reached as
//! `localhost:5432`, and two databases of one server. PostgreSQL lets every role run
//! `pg_control_system()` unless an administrator revoked it; where it did, start-up says which
//! GRANT restores it rather than falling back to a weaker name (a host name and port name a
//! route to a server, not the server, and the schema has no row of its own to name the database
//! by, see [`read_identity`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::internal_events::{DatabaseIdentityUnavailable, DirectoryClaimed, Metrics};
use crate::model::{DatabaseIdentity, DirectoryClaim};
use crate::store::identity::read_identity;
use crate::store::pool::{classify, Failure};
use crate::store::Pool;

/// The marker's file name in the input directory. Hidden, so discovery never takes it for an
/// event file.
pub const MARKER_NAME: &str = ".ingestor-database";

impl DatabaseIdentity {
    /// The marker's content: a comment for whoever finds the file, then `key=value` lines.
    fn render(&self) -> String {
        format!(
            "# Written by the ingestor: the event files of this directory are loaded into this\n\
             # database only. An ingestor started on this directory with another database refuses\n\
             # to start. Delete this file only if the directory has really moved to another database.\n\
             system_identifier={}\ndatabase={}\n",
            self.system_identifier, self.database
        )
    }

    /// Reads a marker's content; `None` when a key is missing or malformed.
    fn parse(text: &str) -> Option<Self> {
        let mut system_identifier = None;
        let mut database = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            match line.split_once('=') {
                Some(("system_identifier", value)) => system_identifier = value.parse().ok(),
                Some(("database", value)) => database = Some(value.to_owned()),
                _ => {}
            }
        }
        Some(DatabaseIdentity {
            system_identifier: system_identifier?,
            database: database?,
        })
    }
}

/// Why an ingestor may not load this directory.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The directory belongs to another database.
    #[error(
        "input directory {dir} is loaded into {recorded} (according to {marker}), but this \
         ingestor connects to {ours}; two ingestors on one directory must share one database, \
         or the files are split between the databases. Point this ingestor at its own input \
         directory, or at the directory's database; if the directory has really moved to the \
         new database, delete {marker}"
    )]
    OtherDatabase {
        /// The input directory.
        dir: String,
        /// The marker file.
        marker: String,
        /// The database the marker names.
        recorded: DatabaseIdentity,
        /// This ingestor's database.
        ours: DatabaseIdentity,
    },
    /// The marker exists but cannot be read as one.
    #[error(
        "{marker} does not name a database (expected `system_identifier=` and `database=` \
         lines); restore it, or delete it if no other database loads this directory"
    )]
    Unreadable {
        /// The marker file.
        marker: String,
    },
}

/// The marker's path in `dir`.
pub fn marker_path(dir: &Path) -> PathBuf {
    dir.join(MARKER_NAME)
}

/// Compares `ours` with the marker in `dir`, writing the marker when there is none.
///
/// The marker is written to a temporary hidden file, flushed, and then linked to its name
/// (`link` never replaces): of two replicas starting together on a fresh directory, one
/// writes the marker and the other reads and compares it, and no reader ever sees half a file.
///
/// # Errors
/// A [`ClaimError`] when the marker names another database or cannot be read, an I/O error when
/// it cannot be read or written.
pub fn claim(dir: &Path, ours: &DatabaseIdentity) -> anyhow::Result<DirectoryClaim> {
    let marker = marker_path(dir);
    let written = match std::fs::read_to_string(&marker) {
        Ok(text) => return compare(dir, &marker, &text, ours).map(|()| DirectoryClaim::Confirmed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new(dir, &marker, ours)?,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", marker.display()));
        }
    };
    if written {
        return Ok(DirectoryClaim::Written);
    }
    // Another ingestor linked its marker first: compare with that one.
    let text = std::fs::read_to_string(&marker)
        .with_context(|| format!("cannot read {}", marker.display()))?;
    compare(dir, &marker, &text, ours).map(|()| DirectoryClaim::Confirmed)
}

fn compare(dir: &Path, marker: &Path, text: &str, ours: &DatabaseIdentity) -> anyhow::Result<()> {
    let Some(recorded) = DatabaseIdentity::parse(text) else {
        return Err(ClaimError::Unreadable {
            marker: marker.display().to_string(),
        }
        .into());
    };
    if recorded == *ours {
        return Ok(());
    }
    Err(ClaimError::OtherDatabase {
        dir: dir.display().to_string(),
        marker: marker.display().to_string(),
        recorded,
        ours: ours.clone(),
    }
    .into())
}

/// Writes the marker unless one appeared meanwhile; whether this call wrote it.
fn write_new(dir: &Path, marker: &Path, ours: &DatabaseIdentity) -> anyhow::Result<bool> {
    let temp = dir.join(format!("{MARKER_NAME}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(ours.render().as_bytes())?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&temp, marker));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            // The name must survive a power cut, or a restart could find no marker and accept
            // another database; a directory that cannot be synced still holds the name.
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot write {}", marker.display())),
    }
}

/// Waits for the database, then claims the input directory for it ([`claim`]). Returns when
/// the claim holds or `cancel` fires; the loader starts only after it.
///
/// # Errors
/// When the directory belongs to another database, or the role may not read the server's
/// identity: no retry fixes either, and loading would split the files.
pub async fn claim_directory(
    settings: &Settings,
    pool: &Pool,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut retry_in = settings.retry_initial;
    loop {
        let identity = async {
            let mut conn = pool.get().await?;
            // A read cut short leaves its reply unread: in doubt until it answered.
            conn.doubt();
            let identity = read_identity(&conn).await?;
            conn.settle();
            anyhow::Ok(identity)
        };
        match identity.await {
            Ok(identity) => {
                let dir = settings.input_dir.clone();
                let ours = identity.clone();
                let claimed = tokio::task::spawn_blocking(move || claim(&dir, &ours))
                    .await
                    .context("directory claim task panicked")??;
                DirectoryClaimed {
                    dir: &settings.input_dir,
                    identity: &identity,
                    claim: claimed,
                }
                .emit(metrics);
                return Ok(());
            }
            Err(e) if matches!(classify(&e), Failure::PermissionDenied(_)) => {
                return Err(e);
            }
            Err(error) => {
                DatabaseIdentityUnavailable {
                    error: &error,
                    retry_in,
                }
                .emit(metrics);
                tokio::select! {
                    () = tokio::time::sleep(retry_in) => {}
                    () = cancel.cancelled() => return Ok(()),
                }
                retry_in = retry_in
                    .saturating_mul(2)
                    .min(settings.retry_max)
                    .max(Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn identity(id: i64, db: &str) -> DatabaseIdentity {
        DatabaseIdentity {
            system_identifier: id,
            database: db.to_owned(),
        }
    }

    #[test]
    fn the_first_claim_writes_the_marker_and_later_ones_compare_with_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            claim(dir.path(), &identity(7, "events")).unwrap(),
            DirectoryClaim::Written
        );
        assert_eq!(
            claim(dir.path(), &identity(7, "events")).unwrap(),
            DirectoryClaim::Confirmed
        );
        for other in [identity(8, "events"), identity(7, "other")] {
            let err = claim(dir.path(), &other).unwrap_err().to_string();
            assert!(
                err.contains(
                    "is loaded into database `events` on the server with system identifier 7"
                ) && err.contains(&format!("connects to {other}")),
                "{err}"
            );
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the marker is left: {names:?}");
    }

    #[test]
    fn a_marker_that_names_no_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(marker_path(dir.path()), "database=events\n").unwrap();
        let err = claim(dir.path(), &identity(7, "events")).unwrap_err();
        assert!(
            err.to_string().contains("does not name a database"),
            "{err}"
        );
    }
}
