//! One directory, one database (issue 12, item 6): the input directory's marker names the
//! database its files go to; an ingestor with another database refuses to start, replicas of
//! the same database share the directory, and the marker outlives restarts.

use std::io::Read;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use ingestor::claim::MARKER_NAME;
use stack_tests::{ChildGuard, TestDatabase};

use crate::helpers::*;

/// Bound on loading a test's files, and on a refused start.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `ingestor run` on `input` with `database_url` and waits for it to exit by itself:
/// its exit status and its log (standard output and error).
fn run_until_exit(database_url: &str, input: &Path) -> (ExitStatus, String) {
    let child = ingestor_run_command(database_url, input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    let status = guard
        .wait_with_timeout(TIMEOUT)
        .expect("the ingestor kept running on a directory of another database");
    let mut log = String::new();
    let child = guard.child_mut();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    (status, log)
}

async fn ledger_entries(db: &TestDatabase) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM ingest_files", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_ingestor_with_another_database_refuses_a_claimed_directory_across_restarts() {
    // Arrange: a directory loaded into database A, with the ingestor stopped and started again.
    let (a, b) = (TestDatabase::create().await, TestDatabase::create().await);
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 4, 500, 61, Faults::default());
    let expected = expected(&event_files(dir.path()));
    let first = Ingestor::spawn(&ingestor_url(&a), dir.path(), &[]);
    wait_for_ledger(&a, dir.path(), expected.files, TIMEOUT).await;
    assert!(first.wait_for_log("\"marker\":\"written\"", TIMEOUT));
    let marker = std::fs::read_to_string(dir.path().join(MARKER_NAME)).unwrap();
    assert!(
        marker.contains(&format!("database={}\n", a.name)),
        "{marker}"
    );
    assert!(first.terminate(TIMEOUT).success());
    let again = Ingestor::spawn(&ingestor_url(&a), dir.path(), &[]);
    assert!(
        again.wait_for_log("\"marker\":\"confirmed\"", TIMEOUT),
        "{:#?}",
        again.log_lines()
    );
    assert!(again.terminate(TIMEOUT).success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join(MARKER_NAME)).unwrap(),
        marker,
        "the marker survives restarts unchanged"
    );

    // Act: new files arrive, and an ingestor for database B starts on the directory.
    generate(dir.path(), 2, 500, 62, Faults::default());
    let waiting = csv_names(dir.path());
    let (status, log) = run_until_exit(&ingestor_url(&b), dir.path());

    // Assert: it exits 1 naming both databases and the marker, and loads nothing.
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("is loaded into database `{}`", a.name))
            && log.contains(&format!("this ingestor connects to database `{}`", b.name))
            && log.contains("system identifier")
            && log.contains(MARKER_NAME),
        "{log}"
    );
    assert_eq!(ledger_entries(&b).await, 0, "database B loaded files");
    assert_eq!(csv_names(dir.path()), waiting, "files were moved");
    assert_exact(&a, &expected).await;
}

#[tokio::test]
async fn two_replicas_of_one_database_share_a_fresh_directory_and_load_it_exactly() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 12, 1_000, 63, Faults::default());
    let expected = expected(&event_files(dir.path()));

    // Act: both start at once on a directory with no marker yet.
    let replicas = [
        Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]),
        Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]),
    ];
    wait_for_ledger(&db, dir.path(), expected.files, TIMEOUT).await;

    // Assert: exactly one wrote the marker, the other confirmed it, both still run, and the
    // load is exact.
    for replica in &replicas {
        assert!(
            replica.wait_for_log("Input directory claimed", TIMEOUT),
            "{:#?}",
            replica.log_lines()
        );
    }
    let written = replicas
        .iter()
        .flat_map(|r| r.log_lines())
        .filter(|l| l.contains("\"marker\":\"written\""))
        .count();
    assert_eq!(written, 1);
    assert_exact(&db, &expected).await;
    assert_ledger_matches_tables(&db).await;
    for mut replica in replicas {
        assert!(replica.exit_status().is_none(), "a replica exited");
        assert!(replica.terminate(TIMEOUT).success());
    }
}
