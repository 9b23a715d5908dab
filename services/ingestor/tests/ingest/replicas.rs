//! Several ingestors on one directory and one database: they share the work through the
//! ledger's claims, and every file is loaded by exactly one of them, exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use stack_tests::TestDatabase;

use crate::helpers::*;

/// Bound on loading a test's whole backlog: typical runs take a fraction of it, but a debug build
/// on a busy machine can be slow.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Replicas started by each test.
const REPLICAS: usize = 3;
/// Pause between two waves of arriving files: long enough for the replicas to be busy with one
/// wave when the next lands, short enough that waves overlap.
const WAVE_PAUSE: Duration = Duration::from_millis(300);

#[tokio::test]
async fn three_replicas_share_a_directory_and_load_each_file_exactly_once() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        60,
        2_000,
        41,
        Faults {
            invalid: 0.01,
            duplicate: 0.02,
            late: 0.0,
        },
    );
    let files = csv_names(dir.path());
    let expected = expected(&event_files(dir.path()));

    // Act
    let replicas = spawn_replicas(&db, dir.path());
    wait_for_ledger(&db, dir.path(), files.len(), LOAD_TIMEOUT).await;

    // Assert
    assert_exact(&db, &expected).await;
    assert_ledger_matches_tables(&db).await;
    assert_one_ledger_entry_per_content(&db, &event_files(dir.path())).await;
    assert_eq!(csv_names(&dir.path().join("processed")), files);
    assert!(event_files(&dir.path().join("failed")).is_empty());
    // The replicas start one after another on a backlog that takes seconds to load, so the
    // later ones join while the first is still busy.
    assert_replicas_shared_the_work(&db).await;
    stop_all(replicas);
}

#[tokio::test]
async fn files_arriving_in_waves_with_duplicates_across_files_are_loaded_once_by_the_replicas() {
    // Arrange: six waves of files, generated up front in a directory the replicas do not
    // watch. The last wave re-uses the first one's seed, so it carries the same event ids in
    // new files (new timestamps, new content): a producer replaying its events. A byte-identical
    // copy of a first-wave file under a new name arrives with it as well.
    let db = TestDatabase::create().await;
    let staging = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let mut waves: Vec<Vec<PathBuf>> = [42, 43, 44, 45, 46, 42]
        .iter()
        .enumerate()
        .map(|(n, seed)| {
            let wave = staging.path().join(format!("wave-{n}"));
            generate(
                &wave,
                10,
                2_000,
                *seed,
                Faults {
                    invalid: 0.01,
                    duplicate: 0.02,
                    late: 0.02,
                },
            );
            event_files(&wave)
        })
        .collect();
    let expected = expected(&waves.concat());
    let repeated = expected.lines - expected.rejected - expected.unique_ids.len() as u64;
    assert!(
        repeated > 10_000,
        "the input must repeat events across files, but only {repeated} lines are repeats"
    );
    let copy = staging.path().join("redelivered.csv");
    std::fs::copy(&waves[0][0], &copy).unwrap();
    waves.last_mut().unwrap().push(copy);
    let replicas = spawn_replicas(&db, inbox.path());

    // Act: the waves land while the replicas run, the way a producer publishes: by rename.
    for wave in &waves {
        for file in wave {
            let target = inbox.path().join(file.file_name().unwrap());
            assert!(!target.exists(), "{} delivered twice", target.display());
            std::fs::rename(file, target).unwrap();
        }
        tokio::time::sleep(WAVE_PAUSE).await;
    }
    wait_for_ledger(&db, inbox.path(), expected.files, LOAD_TIMEOUT).await;

    // Assert
    assert_exact(&db, &expected).await;
    assert_ledger_matches_tables(&db).await;
    let delivered = event_files(inbox.path());
    assert_eq!(
        event_files(&inbox.path().join("processed")).len(),
        expected.files + 1,
        "every delivered file archived, the re-delivered copy included"
    );
    assert!(event_files(&inbox.path().join("failed")).is_empty());
    assert_one_ledger_entry_per_content(&db, &delivered).await;
    // Each wave wakes all replicas with the same inotify events, and they race for its files.
    assert_replicas_shared_the_work(&db).await;
    stop_all(replicas);
}

/// Starts [`REPLICAS`] ingestors named `replica-1`, `replica-2`, ... on `dir`, with the
/// default batching and loader settings.
fn spawn_replicas(db: &TestDatabase, dir: &Path) -> Vec<Ingestor> {
    let url = ingestor_url(db);
    (1..=REPLICAS)
        .map(|n| {
            let id = format!("replica-{n}");
            Ingestor::spawn(&url, dir, &[("INGESTOR_INSTANCE_ID", &id)])
        })
        .collect()
}

/// SIGTERM to every replica; each must drain and exit cleanly.
fn stop_all(replicas: Vec<Ingestor>) {
    for replica in replicas {
        let exit = replica.terminate(Duration::from_secs(15));
        assert!(exit.success(), "{exit:?}");
    }
}

/// Every distinct content among `files` has exactly one ledger entry, and the ledger has no
/// other: copies of a file under other names share their original's entry.
async fn assert_one_ledger_entry_per_content(db: &TestDatabase, files: &[PathBuf]) {
    let contents: BTreeSet<(Vec<u8>, i64)> = files
        .iter()
        .map(|path| {
            let identity = ingestor::source::reader::identify(path).unwrap();
            (identity.hash.to_vec(), identity.size as i64)
        })
        .collect();
    let mut entries: BTreeMap<(Vec<u8>, i64), usize> = BTreeMap::new();
    for row in db
        .client()
        .await
        .query("SELECT content_hash, size_bytes FROM ingest_files", &[])
        .await
        .unwrap()
    {
        *entries.entry((row.get(0), row.get(1))).or_default() += 1;
    }
    assert!(
        entries.values().all(|n| *n == 1),
        "a content with several ledger entries"
    );
    assert_eq!(
        entries.keys().cloned().collect::<BTreeSet<_>>(),
        contents,
        "the ledger holds one entry per distinct file content, and nothing else"
    );
}

/// At least two replicas claimed files, and no one else did.
async fn assert_replicas_shared_the_work(db: &TestDatabase) {
    let rows = db
        .client()
        .await
        .query(
            "SELECT claimed_by, count(*) FROM ingest_files GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let claims: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    eprintln!("files claimed per replica: {claims:?}");
    let replicas: BTreeSet<String> = (1..=REPLICAS).map(|n| format!("replica-{n}")).collect();
    assert!(
        claims.keys().all(|id| replicas.contains(id)),
        "claims by an unknown instance: {claims:?}"
    );
    assert!(
        claims.len() >= 2,
        "one replica did all the work: {claims:?}"
    );
}
