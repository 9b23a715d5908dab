//! Crashes and signals: whatever moment the ingestor dies at, and however it is asked to stop,
//! no file is lost, none is loaded twice, and no half-loaded state survives. The next start
//! finishes the work.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stack_tests::TestDatabase;

use crate::helpers::*;

/// How many times the crash test kills the ingestor before letting it finish.
const KILL_ROUNDS: usize = 12;
/// How long each doomed ingestor runs before SIGKILL, in milliseconds.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 20..=400;
/// Set to a seed printed by a failed run to replay the same kill moments.
const SEED_VARIABLE: &str = "CRASH_TEST_SEED";
/// Bound on loading a test's whole backlog: typical runs take a fraction of it, but a debug build
/// on a busy machine can be slow.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a drain may take (the ingestor's `drain_timeout_ms`, set explicitly in these tests).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn kill_dash_nine_at_random_moments_loses_and_duplicates_nothing() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    // Enough files that the backlog outlasts every kill round: the rounds load 5 to 9 files
    // each on an idle machine, about 100 in all.
    generate(
        dir.path(),
        160,
        2_000,
        21,
        Faults {
            invalid: 0.01,
            duplicate: 0.02,
            late: 0.02,
        },
    );
    let files = csv_names(dir.path());
    let expected = expected(&event_files(dir.path()));
    let url = ingestor_url(&db);
    // Small batches, so that a transaction is in flight most of the time a process is killed.
    let envs = [("INGESTOR_BATCH_MAX_FILES", "3")];
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let client = db.client().await;

    // Act: start and SIGKILL the ingestor again and again, then let one run finish.
    let mut waiting = files.len();
    for round in 1..=KILL_ROUNDS {
        let ingestor = Ingestor::spawn(&url, dir.path(), &envs);
        let after = Duration::from_millis(rng.random_range(KILL_AFTER_MS));
        tokio::time::sleep(after).await;
        ingestor.kill();
        waiting = csv_names(dir.path()).len();
        eprintln!(
            "round {round}: killed after {after:?}; {} files finished, {waiting} waiting",
            finished_files(&client).await,
        );
    }
    assert!(
        waiting > 0,
        "the backlog was gone before the last kill, so not every kill hit a busy ingestor; \
         make the backlog larger"
    );
    let mut survivor = Ingestor::spawn(&url, dir.path(), &envs);
    wait_for_ledger(&db, dir.path(), files.len(), LOAD_TIMEOUT).await;

    // Assert
    assert_exact(&db, &expected).await;
    assert_ledger_matches_tables(&db).await;
    assert_eq!(
        csv_names(&dir.path().join("processed")),
        files,
        "every file archived under its own name"
    );
    assert!(
        event_files(&dir.path().join("failed")).is_empty(),
        "no file failed"
    );
    assert_eq!(
        leftovers(dir.path()),
        Vec::<String>::new(),
        "nothing but the archive and failed directories left in the input directory"
    );
    let exit = stop(&mut survivor);
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn sigterm_lets_the_batch_in_flight_commit_and_exits_zero() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        40,
        5_000,
        22,
        Faults {
            invalid: 0.01,
            duplicate: 0.02,
            late: 0.02,
        },
    );
    let files = csv_names(dir.path());
    let expected = expected(&event_files(dir.path()));
    let url = ingestor_url(&db);
    let envs = [
        ("INGESTOR_BATCH_MAX_FILES", "4"),
        ("INGESTOR_DRAIN_TIMEOUT_MS", "10000"),
    ];
    let client = db.client().await;
    let mut ingestor = Ingestor::spawn(&url, dir.path(), &envs);
    // Loaded files counted while a batch is in flight (an ingestor transaction is open), so
    // that batch's commit, before or after the signal, shows up as more loaded files.
    let loaded_before = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM ingest_files WHERE status = 'loaded'), \
                     (SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                      AND application_name = 'ingestor' AND xact_start IS NOT NULL)",
                    &[&db.name],
                )
                .await
                .unwrap();
            let (loaded, in_flight): (i64, i64) = (row.get(0), row.get(1));
            if loaded >= 1 && in_flight >= 1 {
                break loaded;
            }
            assert!(
                Instant::now() < deadline,
                "no file loaded with a batch in flight within 30 s: {loaded} loaded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    // Act
    signal(ingestor.pid(), "TERM");
    let exit = ingestor.wait_for_exit(DRAIN_TIMEOUT + Duration::from_secs(5));

    // Assert: a clean exit, after the batch in flight committed and its files were archived.
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "no exit within the drain timeout after SIGTERM: {:#?}",
            ingestor.log_lines()
        )
    });
    assert!(exit.success(), "{exit:?}: {:#?}", ingestor.log_lines());
    assert!(
        !ingestor
            .log_lines()
            .iter()
            .any(|l| l.contains("Drain timeout reached")),
        "the batch in flight was aborted instead of committed"
    );
    assert_ledger_matches_tables(&db).await;
    let loaded = ledger_names(&client, "loaded").await;
    assert!(
        loaded.len() as i64 > loaded_before,
        "the batch in flight at SIGTERM was not committed ({loaded_before} files loaded \
         before, {} after)",
        loaded.len()
    );
    let archived = csv_names(&dir.path().join("processed"));
    let waiting = csv_names(dir.path());
    assert_eq!(
        archived, loaded,
        "archived exactly the files the ledger calls loaded"
    );
    assert!(
        waiting.is_disjoint(&loaded),
        "loaded files left in the input directory: {:?}",
        waiting.intersection(&loaded).collect::<Vec<_>>()
    );
    assert_eq!(
        &archived | &waiting,
        files,
        "every file is either archived or still waiting"
    );
    assert!(
        !waiting.is_empty(),
        "the ingestor finished the whole backlog before SIGTERM arrived, so this run did not \
         test stopping mid-backlog; make the backlog larger"
    );
    assert!(
        ledger_names(&client, "failed").await.is_empty(),
        "no file failed"
    );

    // Act: the next start picks up where the last one stopped.
    let mut restarted = Ingestor::spawn(&url, dir.path(), &envs);
    wait_for_ledger(&db, dir.path(), files.len(), LOAD_TIMEOUT).await;

    // Assert
    assert_exact(&db, &expected).await;
    assert_ledger_matches_tables(&db).await;
    assert_eq!(csv_names(&dir.path().join("processed")), files);
    let exit = stop(&mut restarted);
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    // Arrange: files large enough that finishing the one in flight takes a while, and a drain
    // timeout far beyond the test's patience: exiting with 130 before the loader stopped can
    // only be the second signal's doing.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        8,
        25_000,
        23,
        Faults {
            invalid: 0.01,
            duplicate: 0.02,
            late: 0.02,
        },
    );
    let files = csv_names(dir.path());
    let expected = expected(&event_files(dir.path()));
    let url = ingestor_url(&db);
    let envs = [("INGESTOR_DRAIN_TIMEOUT_MS", "60000")];
    let client = db.client().await;
    let mut ingestor = Ingestor::spawn(&url, dir.path(), &envs);
    wait_until(
        "a transaction is in flight",
        Duration::from_secs(30),
        || async { transactions_in_flight(&client, &db.name).await >= 1 },
    )
    .await;

    // Act
    signal(ingestor.pid(), "TERM");
    assert!(
        ingestor.wait_for_log("Shutdown requested", Duration::from_secs(5)),
        "the first SIGTERM was not noticed: {:#?}",
        ingestor.log_lines()
    );
    // The second signal, repeated like an impatient operator would: the ingestor starts
    // listening for it only after handling the first, so one landing in between goes unheard.
    let second = Instant::now();
    let exit = loop {
        signal(ingestor.pid(), "TERM");
        if let Some(exit) = ingestor.wait_for_exit(Duration::from_millis(500)) {
            break exit;
        }
        assert!(
            second.elapsed() < Duration::from_secs(5),
            "still running 5 s after the second SIGTERM: {:#?}",
            ingestor.log_lines()
        );
    };

    // Assert: gone at once, through the second-signal path rather than a finished drain.
    assert_eq!(
        exit.code(),
        Some(130),
        "{exit:?}: {:#?}",
        ingestor.log_lines()
    );
    assert!(
        !ingestor
            .log_lines()
            .iter()
            .any(|l| l.contains("Loader stopped")),
        "the drain finished before the second signal, so it was not tested"
    );
    assert_ledger_matches_tables(&db).await;

    // Act: the next start loads everything, the rolled-back files included.
    let mut restarted = Ingestor::spawn(&url, dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), files.len(), LOAD_TIMEOUT).await;

    // Assert
    assert_exact(&db, &expected).await;
    assert_ledger_matches_tables(&db).await;
    assert_eq!(csv_names(&dir.path().join("processed")), files);
    let exit = stop(&mut restarted);
    assert!(exit.success(), "{exit:?}");
}

/// The seed for the kill moments: from [`SEED_VARIABLE`] if set, random otherwise; printed
/// either way (test output is shown when a test fails).
fn seed() -> u64 {
    let seed = std::env::var(SEED_VARIABLE)
        .ok()
        .map(|s| s.parse().expect("CRASH_TEST_SEED must be a u64"))
        .unwrap_or_else(rand::random);
    eprintln!("kill moments seed: {seed} (replay with {SEED_VARIABLE}={seed})");
    seed
}

/// Entries of the input directory other than its archive and failed subdirectories and the
/// database marker (temp files, half-moved files, anything else).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name != "processed" && name != "failed" && name != ingestor::claim::MARKER_NAME
        })
        .collect()
}

/// Names of the files the ledger has in `status`.
async fn ledger_names(client: &tokio_postgres::Client, status: &str) -> BTreeSet<String> {
    client
        .query(
            "SELECT file_name FROM ingest_files WHERE status = $1",
            &[&status],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Ledger entries with a final status.
async fn finished_files(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM ingest_files WHERE status IN ('loaded', 'failed')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Ingestor sessions on `database` with an open transaction.
async fn transactions_in_flight(client: &tokio_postgres::Client, database: &str) -> i64 {
    client
        .query_one(
            // A transaction that has written (an xid): a loading one, not a read such as the
            // directory claim's identity query, which also runs in a pooled session.
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'ingestor' AND backend_xid IS NOT NULL",
            &[&database],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls `condition` every 20 ms until it holds; fails the test naming `what` after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, and the exit status once it drained.
fn stop(ingestor: &mut Ingestor) -> ExitStatus {
    signal(ingestor.pid(), "TERM");
    ingestor
        .wait_for_exit(DRAIN_TIMEOUT + Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit after SIGTERM: {:#?}", ingestor.log_lines()))
}
