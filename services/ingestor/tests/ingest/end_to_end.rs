//! The whole path: generator files with injected faults, loaded by a real ingestor process.

use std::time::Duration;

use stack_tests::TestDatabase;

use crate::helpers::*;

#[tokio::test]
async fn generated_files_with_faults_load_exactly_and_every_line_is_accounted_for() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        30,
        1_000,
        11,
        Faults {
            invalid: 0.02,
            duplicate: 0.03,
            late: 0.05,
        },
    );
    let expected = expected(&event_files(dir.path()));
    // Act
    let ingestor = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), 30, Duration::from_secs(60)).await;
    // Assert
    assert_exact(&db, &expected).await;
    assert_eq!(
        event_files(&dir.path().join("processed")).len(),
        30,
        "every file archived"
    );
    let (status, _) = ingestor.get("/readyz");
    assert_eq!(status, 200);
    let exit = ingestor.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_file_that_reappears_under_another_name_is_not_loaded_again() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 2, 500, 5, Faults::default());
    let expected = expected(&event_files(dir.path()));
    let ingestor = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), 2, Duration::from_secs(30)).await;
    // Act: re-deliver a loaded file under a new name.
    let archived = event_files(&dir.path().join("processed"));
    std::fs::copy(&archived[0], dir.path().join("redelivered.csv")).unwrap();
    let client = db.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dir.path().join("redelivered.csv").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "re-delivered file was never handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Assert
    assert_exact(&db, &expected).await;
    let ledger: i64 = client
        .query_one("SELECT count(*) FROM ingest_files", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger, 2, "the same content is one ledger entry");
    drop(ingestor);
}
