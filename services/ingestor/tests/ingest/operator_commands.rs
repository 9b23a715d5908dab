//! The operator commands run as users run them: the binary, against a real database. The
//! ingestor they run beside is the application inside the test (`spawn_app`): the commands are
//! the processes under test.

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

/// `files` generated files of 100 rows with 10% invalid rows (seeded by `seed`), and
/// `broken.csv`, whose header fails the whole file.
fn write_files_and_a_broken_one(dir: &Path, files: u64, seed: u64) {
    generate(
        dir,
        files,
        100,
        seed,
        Faults {
            invalid: 0.1,
            ..Faults::default()
        },
    );
    std::fs::write(dir.join("broken.csv"), "a,b\n1,2\n").unwrap();
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
    write_files_and_a_broken_one(dir.path(), 3, 1);
    let running = spawn_app(&ingestor_url(&db), dir.path(), &[]).await;
    wait_for_ledger(&db, dir.path(), 4, Duration::from_secs(30)).await;
    running.stop().await.unwrap();
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
    assert_eq!(status["backlog"]["files"], 2);
    assert_eq!(status["totals"]["files_loaded"], 3);
    assert_eq!(status["totals"]["files_failed"], 1);
    assert_eq!(status["totals"]["lines"], 300);
    let accounted = status["totals"]["accepted"].as_i64().unwrap()
        + status["totals"]["duplicates"].as_i64().unwrap()
        + status["totals"]["rejected"].as_i64().unwrap();
    assert_eq!(accounted, 300);
    assert!(status["totals"]["rejected"].as_i64().unwrap() > 0);
    assert_eq!(status["recent_failures"][0]["file"], "broken.csv");
    assert_eq!(
        status["recent_failures"][0]["reason"],
        "header_missing_column"
    );
    assert!(status["last_commit"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn status_command_and_status_endpoint_answer_the_same_report() {
    // Arrange: one loaded file with rejected rows, one that failed, one waiting.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    write_files_and_a_broken_one(dir.path(), 1, 7);
    let running = spawn_app(
        &ingestor_url(&db),
        dir.path(),
        &[("INGESTOR_INSTANCE_ID", "same-report")],
    )
    .await;
    wait_for_ledger(&db, dir.path(), 2, Duration::from_secs(30)).await;
    // Act (blocking calls off the runtime's threads: the application runs on them)
    let (code, body) = tokio::task::block_in_place(|| running.get("/status"));
    let command = ingestor(&ingestor_url(&db), dir.path(), &["status", "--json"]);
    // Assert: one shape, and the same facts in it.
    assert_eq!(code, 200, "{body}");
    assert!(command.status.success(), "{}", stdout(&command));
    let endpoint: serde_json::Value = serde_json::from_str(&body).unwrap();
    let printed: serde_json::Value = serde_json::from_str(&stdout(&command)).unwrap();
    assert_eq!(
        shape(&endpoint),
        shape(&printed),
        "{endpoint:#}\n{printed:#}"
    );
    for field in [
        "version",
        "backlog",
        "totals",
        "last_commit",
        "recent_failures",
    ] {
        assert_eq!(endpoint[field], printed[field], "{field}");
    }
    assert_eq!(endpoint["instance_id"], "same-report");
    assert_eq!(printed["instance_id"], serde_json::Value::Null);
    assert_eq!(printed["totals"]["files_failed"], 1, "{printed:#}");
    drop(running);
}

/// The keys of a JSON value, recursively, with arrays reduced to their first element's keys:
/// what a script reading the report depends on.
fn shape(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(key, v)| (key.clone(), shape(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.first().map(shape).into_iter().collect())
        }
        _ => serde_json::Value::Null,
    }
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
    let running = spawn_app(&ingestor_url(&db), dir.path(), &[]).await;
    wait_for_ledger(&db, dir.path(), 1, Duration::from_secs(30)).await;
    running.stop().await.unwrap();
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
    let running = spawn_app(&ingestor_url(&db), dir.path(), &[]).await;
    wait_for_ledger(&db, dir.path(), 2, Duration::from_secs(30)).await;
    // Act + Assert: refused without --yes, while an ingestor runs, and for the ingestor role.
    assert!(!ingestor(&db.url, dir.path(), &["reset"]).status.success());
    let busy = ingestor(&db.url, dir.path(), &["reset", "--yes"]);
    assert!(String::from_utf8_lossy(&busy.stderr).contains("stop the ingestors first"));
    running.stop().await.unwrap();
    wait_for_presence(&db, 0).await;
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
    let again = spawn_app(&ingestor_url(&db), dir.path(), &[]).await;
    wait_for_ledger(&db, dir.path(), 2, Duration::from_secs(30)).await;
    assert_exact(&db, &expected).await;
    drop(again);
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_finds_a_running_ingestor_by_its_presence_lock_not_its_application_name() {
    // Arrange: an ingestor with an application_name of its own, idle with an empty pool.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?application_name=custom-loader", ingestor_url(&db));
    let running = Ingestor::spawn(&url, dir.path(), &[]);
    wait_for_presence(&db, 1).await;
    let client = db.client().await;
    let open: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'ingestor'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        open, 0,
        "the old check (application_name = 'ingestor') would see nothing"
    );
    // Act
    let refused = ingestor(&db.url, dir.path(), &["reset", "--yes"]);
    drop(running);
    wait_for_presence(&db, 0).await;
    let allowed = ingestor(&db.url, dir.path(), &["reset", "--yes"]);
    // Assert
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop the ingestors first"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

/// Waits until `holders` sessions hold the ingestors' presence lock on the test database.
async fn wait_for_presence(db: &TestDatabase, holders: i64) {
    let client = db.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
                 AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
                &[&ingestor::store::presence::RUNNING_LOCK_KEY],
            )
            .await
            .unwrap()
            .get(0);
        if held == holders {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{held} presence holders, expected {holders}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_follows_readiness_of_the_running_service() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let running = spawn_app(&ingestor_url(&db), dir.path(), &[]).await;
    let listen = format!("127.0.0.1:{}", running.port);
    // Act (the command blocks off the runtime's threads: the application answers on them)
    let healthy = tokio::task::block_in_place(|| {
        ingestor(
            &ingestor_url(&db),
            dir.path(),
            &["--listen", &listen, "healthcheck"],
        )
    });
    running.stop().await.unwrap();
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
