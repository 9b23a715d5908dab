//! A database that is not UTF8 (issue 12, item 3): it cannot store every file name and rejected
//! line, so the ingestor loads nothing into it, quarantines nothing, backs off between attempts,
//! and `/readyz` and `check` say why and what fixes it.

use std::time::{Duration, Instant};

use crate::connection_causes::command;
use crate::database_faults::private_postgres::PrivatePostgres;
use crate::helpers::*;

/// Bound on waiting for the ingestor to show what it does.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What the loader logs each time loading is blocked.
const BLOCKED: &str = "Loading fails for a reason no retry fixes";

/// A private server with database `latin`, in LATIN1, with the schema.
async fn latin1_server() -> PrivatePostgres {
    let server = PrivatePostgres::start();
    server
        .create_database(
            "latin",
            "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        )
        .await;
    server
}

#[tokio::test]
async fn a_latin1_database_loads_and_quarantines_nothing_backs_off_and_says_why() {
    // Arrange: a file named in Japanese, and one with a `€` in a row the contract rejects.
    let server = latin1_server().await;
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 2, 100, 61, Faults::default());
    let files = event_files(dir.path());
    std::fs::rename(&files[0], dir.path().join("日本.csv")).unwrap();
    let mut euro = std::fs::read_to_string(&files[1]).unwrap();
    euro.push_str("not-a-uuid,€,€,view,9.99 €,2024-01-01T00:00:00Z\n");
    std::fs::write(dir.path().join("euro.csv"), euro).unwrap();
    std::fs::remove_file(&files[1]).unwrap();

    // Act
    let ingestor = Ingestor::spawn(&server.url("ingestor", "latin"), dir.path(), &[]);
    let deadline = Instant::now() + TIMEOUT;
    let blocked = loop {
        let blocked: Vec<String> = ingestor
            .log_lines()
            .into_iter()
            .filter(|l| l.contains(BLOCKED))
            .collect();
        if blocked.len() >= 3 {
            break blocked;
        }
        assert!(Instant::now() < deadline, "{:#?}", ingestor.log_lines());
        std::thread::sleep(Duration::from_millis(50));
    };

    // Assert: every attempt names the encoding and waits before the next (no busy loop).
    for line in &blocked {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            json["reason"]
                .as_str()
                .unwrap()
                .contains("the database's encoding is LATIN1, not UTF8"),
            "{line}"
        );
        assert!(json["retry_in_ms"].as_u64().unwrap() > 0, "{line}");
    }
    let (status, body) = ingestor.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("the database's encoding is LATIN1, not UTF8")
            && body.contains("ENCODING 'UTF8'"),
        "{body}"
    );
    // Nothing stored, nothing quarantined: both files wait, as they were.
    let client = stack_tests::connect(&server.url("postgres", "latin"))
        .await
        .unwrap();
    for table in ["events", "ingest_files", "rejected_rows"] {
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "{table}");
    }
    assert_eq!(
        csv_names(dir.path()),
        ["euro.csv", "日本.csv"].map(String::from).into()
    );
    assert!(event_files(&dir.path().join("failed")).is_empty());
    let (_, metrics) = ingestor.get("/metrics");
    assert!(
        !metrics.contains("ingestor_files_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    // `check` fails on the encoding, with the fix.
    let output = command(&server.url("ingestor", "latin"), dir.path(), &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("  FAIL  the database's encoding is LATIN1")),
        "{stdout}"
    );
    assert!(ingestor.terminate(TIMEOUT).success());
}

#[tokio::test]
async fn text_the_database_encoding_cannot_store_is_sqlstate_22p05_and_blocks_without_quarantine() {
    // Arrange
    let server = latin1_server().await;
    let client = stack_tests::connect(&server.url("postgres", "latin"))
        .await
        .unwrap();

    // Act: a `€`, which LATIN1 has no code for.
    let error = client
        .batch_execute("INSERT INTO rejected_rows SELECT 1, 1, '€', 'r', 'm' WHERE false")
        .await
        .unwrap_err();

    // Assert: PostgreSQL's untranslatable_character, which the loader treats as blocking (no
    // retry fixes it, no file is to blame), never as a row's bad data.
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::UNTRANSLATABLE_CHARACTER)
    );
    let error = anyhow::Error::new(error);
    match ingestor::store::classify(&error) {
        ingestor::store::Failure::Blocking(db) => assert_eq!(db.code().code(), "22P05"),
        other => panic!("22P05 classified as {other:?}"),
    }
}

#[tokio::test]
async fn check_names_a_schema_older_than_the_ingestor_needs() {
    // Arrange: a UTF8 database whose schema predates the version marker.
    let server = PrivatePostgres::start();
    server.create_database("events", "").await;
    let client = stack_tests::connect(&server.url("postgres", "events"))
        .await
        .unwrap();
    client
        .batch_execute("DELETE FROM schema_version WHERE version > 50")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Act
    let older = command(&server.url("ingestor", "events"), dir.path(), &["check"]);
    client
        .batch_execute("DROP TABLE schema_version")
        .await
        .unwrap();
    let unknown = command(&server.url("ingestor", "events"), dir.path(), &["check"]);

    // Assert
    let older = String::from_utf8_lossy(&older.stdout);
    assert!(
        older.contains("  FAIL  schema version 50 is older than the 70 this ingestor needs"),
        "{older}"
    );
    assert!(
        older.contains("  ok    database encoding is UTF8"),
        "{older}"
    );
    let unknown_text = String::from_utf8_lossy(&unknown.stdout);
    assert_eq!(unknown.status.code(), Some(1), "{unknown_text}");
    assert!(
        unknown_text.contains("  FAIL  schema version unknown (no table schema_version)"),
        "{unknown_text}"
    );
}
