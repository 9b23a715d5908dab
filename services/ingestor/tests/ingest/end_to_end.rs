//! The whole path: generator files with injected faults, loaded by a real ingestor (a process
//! where its exit status or its log lines are asserted, else in-process through `spawn_app`).

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
    let ingestor = spawn_app(&ingestor_url(&db), dir.path(), &[]).await;
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

#[tokio::test]
async fn ledger_entries_past_retention_are_pruned_with_their_rejections() {
    // Arrange: one finished entry from 40 days ago (with a rejected row) and one from today.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO ingest_files (file_name, size_bytes, content_hash, status, committed_at) VALUES \
             ('old.csv', 1, '\\x01', 'loaded', now() - interval '40 days'), \
             ('new.csv', 2, '\\x02', 'loaded', now() - interval '1 day'); \
             INSERT INTO rejected_rows (file_id, line_number, raw_line, reason, message) \
             SELECT file_id, 2, 'x', 'bad_uuid', 'm' FROM ingest_files WHERE file_name = 'old.csv';",
        )
        .await
        .unwrap();
    // Act
    let ingestor = spawn_app(
        &ingestor_url(&db),
        dir.path(),
        &[("INGESTOR_LEDGER_RETENTION_DAYS", "30")],
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let remaining = loop {
        let names: Vec<String> = client
            .query("SELECT file_name FROM ingest_files ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if names.len() < 2 || std::time::Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Assert
    assert_eq!(remaining, vec!["new.csv".to_owned()]);
    let orphans: i64 = client
        .query_one("SELECT count(*) FROM rejected_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "rejected rows go with their ledger entry");
    drop(ingestor);
}

#[tokio::test]
async fn a_redelivered_file_whose_entry_was_pruned_does_not_store_its_rejected_rows_again() {
    // Arrange: a file with rejected rows, loaded; then its entry ages past retention and an
    // ingestor's start-up prunes it (with its rejected rows).
    const TIMEOUT: Duration = Duration::from_secs(30);
    let db = TestDatabase::create().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let originals = tempfile::tempdir().unwrap();
    let faults = Faults {
        invalid: 0.1,
        ..Faults::default()
    };
    generate(originals.path(), 1, 300, 91, faults);
    let original = event_files(originals.path()).remove(0);
    let expected = expected(std::slice::from_ref(&original));
    assert!(expected.rejected > 0, "the file has rejected rows");
    std::fs::copy(&original, dir.path().join("orders.csv")).unwrap();
    let retention = [("INGESTOR_LEDGER_RETENTION_DAYS", "30")];
    let ingestor = Ingestor::spawn(&ingestor_url(&db), dir.path(), &retention);
    wait_for_ledger(&db, dir.path(), 1, TIMEOUT).await;
    assert_exact(&db, &expected).await;
    assert!(ingestor.terminate(TIMEOUT).success());
    client
        .batch_execute("UPDATE ingest_files SET committed_at = now() - interval '40 days'")
        .await
        .unwrap();
    let ingestor = Ingestor::spawn(&ingestor_url(&db), dir.path(), &retention);
    assert!(ingestor.wait_for_log("Pruned old ledger entries", TIMEOUT));
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM ingest_files").await, 0);
    let rejected_after_pruning = count("SELECT count(*) FROM rejected_rows").await;
    assert_eq!(rejected_after_pruning, 0, "pruned with their entry");

    // Act: the producer delivers the same bytes again, under another name.
    std::fs::copy(&original, dir.path().join("orders-again.csv")).unwrap();

    // Assert: recognised as finished content and archived as is; nothing stored again.
    assert!(
        ingestor.wait_for_log("File content already in the ledger", TIMEOUT),
        "{:#?}",
        ingestor.log_lines()
    );
    stack_tests::wait_for_finished_files(&client, dir.path(), 0, TIMEOUT, String::new).await;
    assert_eq!(
        count("SELECT count(*) FROM rejected_rows").await,
        rejected_after_pruning
    );
    assert_eq!(count("SELECT count(*) FROM ingest_files").await, 0);
    assert_eq!(
        stored_event_ids(&client).await,
        expected.unique_ids,
        "events unchanged"
    );
    // The ledger still accounts for every line of the content, in what retention kept.
    let kept = client
        .query_one(
            "SELECT status, lines, accepted, duplicates, rejected FROM pruned_files",
            &[],
        )
        .await
        .unwrap();
    let (status, lines, accepted, duplicates, rejected): (String, i64, i64, i64, i64) = (
        kept.get(0),
        kept.get(1),
        kept.get(2),
        kept.get(3),
        kept.get(4),
    );
    assert_eq!(status, "loaded");
    assert_eq!(lines as u64, expected.lines);
    assert_eq!(rejected as u64, expected.rejected);
    assert_eq!(accepted as usize, expected.unique_ids.len());
    assert_eq!(lines, accepted + duplicates + rejected);
    assert_eq!(
        std::fs::read(dir.path().join("processed/orders-again.csv")).unwrap(),
        std::fs::read(&original).unwrap(),
        "archived byte for byte"
    );
    let (_, metrics) = ingestor.get("/metrics");
    assert!(
        metrics.contains("ingestor_files_total{outcome=\"already_loaded\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_batch_abandoned_at_the_drain_timeout_exits_non_zero_and_loads_at_the_next_start() {
    // Arrange: another session holds `events` locked, and the loader waits for locks longer than
    // the test runs, so its batch cannot finish within the 500 ms drain timeout.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ingestor = Ingestor::spawn(
        &ingestor_url(&db),
        dir.path(),
        &[
            ("INGESTOR_CONFLICT_WAIT_MS", "600000"),
            ("INGESTOR_DRAIN_TIMEOUT_MS", "500"),
        ],
    );
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    generate(dir.path(), 1, 200, 23, Faults::default());
    let expected = expected(&event_files(dir.path()));
    wait_until_a_session_waits_for_a_lock(&db.client().await, String::new).await;
    // Act
    signal(ingestor.pid(), "TERM");
    let exit = ingestor
        .wait_for_exit(Duration::from_secs(30))
        .expect("the ingestor exits once the drain timeout runs out");
    // Assert
    assert_eq!(
        exit.code(),
        Some(1),
        "an abandoned batch is not a clean stop"
    );
    let logs = ingestor.log_lines();
    assert!(
        logs.iter().any(|l| l.contains("Drain timeout reached"))
            && logs
                .iter()
                .any(|l| l.contains("the drain timeout of 500 ms ran out")),
        "the log says the batch was abandoned:\n{}",
        logs.join("\n")
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    let client = db.client().await;
    let (events, ledger): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM ingest_files)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (events, ledger),
        (0, 0),
        "the abandoned batch was rolled back"
    );
    // The next start loads the file exactly and a stop with nothing in flight exits 0.
    let again = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), 1, Duration::from_secs(60)).await;
    assert_exact(&db, &expected).await;
    let exit = again.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_missing_input_directory_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-there");
    let output = std::process::Command::new(INGESTOR)
        .args(["--listen", "127.0.0.1:0", "--input-dir"])
        .arg(&missing)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success());
    assert!(
        text.contains("input directory") && text.contains("not-there"),
        "{text}"
    );
}

#[test]
fn a_bad_config_value_stops_start_up_naming_the_key_and_the_value() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, needle) in [
        ("INGESTOR_LISTEN", "nowhere", "`listen` = `nowhere`"),
        (
            "INGESTOR_MAX_REJECT_RATIO",
            "1.5",
            "`max_reject_ratio` = `1.5`",
        ),
        ("INGESTOR_AFTER_LOAD", "shred", "shred"),
    ] {
        let output = std::process::Command::new(INGESTOR)
            .arg("--input-dir")
            .arg(dir.path())
            .env(key, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{key}: {stderr}");
    }
}

#[tokio::test]
async fn a_file_whose_rows_postgresql_refuses_is_quarantined_and_the_rest_still_load() {
    // Arrange: a constraint the contract does not know about refuses product 1000001, and one
    // file of five contains it; a backlog so the file arrives inside a multi-file batch.
    let db = TestDatabase::create().await;
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE events ADD CONSTRAINT no_product_1000001 CHECK (product_id <> 1000001)",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stamp = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let good_row = |product: u32| format!("{},42,{product},view,,{stamp}\n", uuid::Uuid::new_v4());
    let header = "event_id,user_id,product_id,event_type,price,event_timestamp\n";
    for n in 0..5 {
        let product = if n == 2 { 1_000_001 } else { 2_000_000 + n };
        let body: String = (0..10).map(|_| good_row(product)).collect();
        std::fs::write(
            dir.path().join(format!("f{n}.csv")),
            format!("{header}{body}"),
        )
        .unwrap();
    }
    // Act
    let ingestor = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), 5, Duration::from_secs(30)).await;
    // Assert
    let client = db.client().await;
    let failed: Vec<(String, String)> = client
        .query(
            "SELECT file_name, failure_reason FROM ingest_files WHERE status = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        failed,
        vec![("f2.csv".to_owned(), "database_rejected".to_owned())]
    );
    assert!(dir.path().join("failed/f2.csv").exists());
    let events: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 40, "the other four files loaded");
    assert_eq!(ingestor.get("/readyz").0, 200, "the service is still ready");
}

#[tokio::test]
async fn a_different_file_reusing_an_old_name_is_loaded_and_delete_mode_removes_files() {
    // Arrange: after_load = delete; a first file named batch.csv is loaded and deleted.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let stamp = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let file = |rows: usize| {
        let body: String = (0..rows)
            .map(|_| format!("{},7,9,view,,{stamp}\n", uuid::Uuid::new_v4()))
            .collect();
        format!("event_id,user_id,product_id,event_type,price,event_timestamp\n{body}")
    };
    let ingestor = Ingestor::spawn(
        &ingestor_url(&db),
        dir.path(),
        &[("INGESTOR_AFTER_LOAD", "delete")],
    );
    std::fs::write(dir.path().join("batch.csv"), file(3)).unwrap();
    wait_for_ledger(&db, dir.path(), 1, Duration::from_secs(20)).await;
    // Act: new content under the same name.
    std::fs::write(dir.path().join("batch.csv"), file(5)).unwrap();
    wait_for_ledger(&db, dir.path(), 2, Duration::from_secs(20)).await;
    // Assert
    let client = db.client().await;
    let events: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 8, "both contents loaded");
    let names: Vec<String> = client
        .query("SELECT file_name FROM ingest_files ORDER BY file_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["batch.csv", "batch.csv"]);
    assert!(
        !dir.path().join("processed/batch.csv").exists(),
        "delete mode archives nothing"
    );
    assert_eq!(event_files(dir.path()).len(), 0, "loaded files are deleted");
    drop(ingestor);
}

#[tokio::test]
async fn an_entry_is_pruned_only_under_its_contents_lock_so_a_claim_never_races_the_prune() {
    // Arrange: a finished entry past retention, and a session holding its content's lock as a
    // claim of the same content does.
    let db = TestDatabase::create().await;
    let client = db.client().await;
    let hash: Vec<u8> = (1..=32).map(|b| b * 7).collect();
    client
        .execute(
            "INSERT INTO ingest_files (file_name, size_bytes, content_hash, status, lines, \
             accepted, committed_at) VALUES ('old.csv', 10, $1, 'loaded', 1, 1, \
             now() - interval '3 days')",
            &[&hash],
        )
        .await
        .unwrap();
    let identity = ingestor::model::FileIdentity {
        size: 10,
        hash: hash.clone().try_into().unwrap(),
    };
    let sql_key: i64 = client
        .query_one(
            &format!(
                "SELECT {} FROM ingest_files",
                ingestor::store::ledger::CONTENT_LOCK_KEY
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sql_key,
        identity.lock_key(),
        "the SQL key is the claim's key"
    );
    let claimer = db.client().await;
    claimer
        .execute("SELECT pg_advisory_lock($1)", &[&identity.lock_key()])
        .await
        .unwrap();
    // Act
    let while_claimed = ingestor::store::ledger::prune(&client, 1).await.unwrap();
    claimer
        .execute("SELECT pg_advisory_unlock($1)", &[&identity.lock_key()])
        .await
        .unwrap();
    let afterwards = ingestor::store::ledger::prune(&client, 1).await.unwrap();
    // Assert
    assert_eq!(while_claimed, 0, "pruned while its content's lock was held");
    assert_eq!(afterwards, 1);
    let kept: i64 = client
        .query_one("SELECT count(*) FROM pruned_files", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
}
