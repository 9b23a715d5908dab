//! The operator commands run as users run them: the binary, against a real database.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use stack_tests::TestDatabase;

use crate::helpers::*;

fn ingestor(database_url: &str, input: &Path, args: &[&str]) -> Output {
    Command::new(INGESTOR)
        .arg("--input-dir")
        .arg(input)
        .args(args)
        .env("DATABASE_URL", database_url)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn check_passes_on_a_correct_setup_and_names_what_is_wrong_otherwise() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    // Act
    let good = ingestor(&ingestor_url(&db), dir.path(), &["check"]);
    let missing_dir = ingestor(&ingestor_url(&db), &dir.path().join("nope"), &["check"]);
    db.client()
        .await
        .batch_execute("DROP TABLE rejected_rows CASCADE")
        .await
        .unwrap();
    let no_table = ingestor(&ingestor_url(&db), dir.path(), &["check"]);
    let superuser = ingestor(&db.url, dir.path(), &["check"]);
    // Assert
    assert!(good.status.success(), "{}", stdout(&good));
    assert!(stdout(&good).contains("all checks passed"));
    assert!(!missing_dir.status.success());
    assert!(
        stdout(&missing_dir).contains("FAIL  input directory"),
        "{}",
        stdout(&missing_dir)
    );
    assert!(!no_table.status.success());
    assert!(
        stdout(&no_table).contains("table rejected_rows is missing"),
        "{}",
        stdout(&no_table)
    );
    assert!(
        stdout(&superuser).contains("warn  connected as superuser"),
        "{}",
        stdout(&superuser)
    );
}

#[tokio::test]
async fn status_reports_backlog_totals_and_failures_as_json() {
    // Arrange: 3 files loaded, 1 failed, then 2 more waiting with no ingestor running.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        3,
        100,
        1,
        Faults {
            invalid: 0.1,
            ..Faults::default()
        },
    );
    std::fs::write(dir.path().join("broken.csv"), "a,b\n1,2\n").unwrap();
    let running = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), 4, Duration::from_secs(30)).await;
    drop(running);
    generate(dir.path(), 2, 100, 2, Faults::default());
    // Act
    let output = ingestor(&ingestor_url(&db), dir.path(), &["status", "--json"]);
    // Assert
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(status["backlog_files"], 2);
    assert_eq!(status["files_loaded"], 3);
    assert_eq!(status["files_failed"], 1);
    assert_eq!(status["lines"], 300);
    let accounted = status["accepted"].as_i64().unwrap()
        + status["duplicates"].as_i64().unwrap()
        + status["rejected"].as_i64().unwrap();
    assert_eq!(accounted, 300);
    assert!(status["rejected"].as_i64().unwrap() > 0);
    assert_eq!(status["recent_failures"][0]["file"], "broken.csv");
    assert_eq!(
        status["recent_failures"][0]["reason"],
        "header_missing_column"
    );
    assert!(status["last_commit"].is_string());
}

#[tokio::test]
async fn replay_loads_a_fixed_failed_file_once_and_refuses_a_second_time() {
    // Arrange: a file whose header is misspelt fails as a whole.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 1, 50, 3, Faults::default());
    let original = event_files(dir.path()).remove(0);
    let text = std::fs::read_to_string(&original).unwrap();
    std::fs::remove_file(&original).unwrap();
    std::fs::write(
        dir.path().join("typo.csv"),
        text.replacen("user_id", "userid", 1),
    )
    .unwrap();
    let running = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), 1, Duration::from_secs(30)).await;
    drop(running);
    let failed = dir.path().join("failed/typo.csv");
    assert!(failed.exists());
    // Act: the operator fixes the file in place and replays it, twice.
    std::fs::write(&failed, &text).unwrap();
    let first = ingestor(
        &ingestor_url(&db),
        dir.path(),
        &["replay", failed.to_str().unwrap()],
    );
    let archived = dir.path().join("processed/typo.csv");
    let second = ingestor(
        &ingestor_url(&db),
        dir.path(),
        &["replay", archived.to_str().unwrap()],
    );
    // Assert
    assert!(
        first.status.success(),
        "{}{}",
        stdout(&first),
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout(&first).contains("50 accepted"), "{}", stdout(&first));
    assert!(second.status.success());
    assert!(
        stdout(&second).contains("nothing loaded twice"),
        "{}",
        stdout(&second)
    );
    let client = db.client().await;
    let events: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 50);
}

#[tokio::test]
async fn reset_needs_confirmation_and_an_admin_connection_then_allows_a_full_reload() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 2, 100, 4, Faults::default());
    let expected = expected(&event_files(dir.path()));
    let running = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), 2, Duration::from_secs(30)).await;
    // Act + Assert: refused without --yes, while an ingestor runs, and for the ingestor role.
    assert!(!ingestor(&db.url, dir.path(), &["reset"]).status.success());
    let busy = ingestor(&db.url, dir.path(), &["reset", "--yes"]);
    assert!(String::from_utf8_lossy(&busy.stderr).contains("stop the ingestors first"));
    drop(running);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unprivileged = ingestor(&ingestor_url(&db), dir.path(), &["reset", "--yes"]);
    assert!(String::from_utf8_lossy(&unprivileged.stderr).contains("admin connection"));
    let reset = ingestor(
        &db.url,
        dir.path(),
        &["reset", "--yes", "--restore-archived"],
    );
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert_eq!(
        event_files(dir.path()).len(),
        2,
        "archived files are back in the input directory"
    );
    // The restored files load again, exactly.
    let again = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), 2, Duration::from_secs(30)).await;
    assert_exact(&db, &expected).await;
    drop(again);
}

#[tokio::test]
async fn healthcheck_follows_readiness_of_the_running_service() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let running = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    let listen = format!("127.0.0.1:{}", running.port);
    // Act
    let healthy = ingestor(
        &ingestor_url(&db),
        dir.path(),
        &["--listen", &listen, "healthcheck"],
    );
    drop(running);
    let gone = ingestor(
        &ingestor_url(&db),
        dir.path(),
        &["--listen", &listen, "healthcheck"],
    );
    // Assert
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    assert!(!gone.status.success());
}

#[test]
fn every_command_explains_itself_in_help() {
    for command in ["run", "check", "status", "replay", "reset", "healthcheck"] {
        let output = Command::new(INGESTOR)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{command} --help failed");
        assert!(
            stdout(&output).contains("--input-dir"),
            "{command} --help lacks the global flags"
        );
    }
    let top = Command::new(INGESTOR).arg("--help").output().unwrap();
    for command in ["run", "check", "status", "replay", "reset", "healthcheck"] {
        assert!(stdout(&top).contains(command));
    }
}
