//! Every failure names its cause and its fix (issue 12, item 4): a connection the server
//! refuses is reported with what the server (or the network) said, in the service log, on
//! `/readyz` and by `ingestor check`, never as "Timed out in bb8"; operator commands end quietly
//! on a closed standard output; `status` prints the backlog when the database is down; logs
//! carry backtraces and colours only when asked for.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::database_faults::private_postgres::{self, PrivatePostgres};
use stack_tests::{free_port, ChildGuard, TestDatabase};

use crate::helpers::*;

/// Bound on waiting for a log line or an answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs an operator command against `database_url` and `input`.
pub(crate) fn command(database_url: &str, input: &Path, args: &[&str]) -> Output {
    Command::new(INGESTOR)
        .arg("--input-dir")
        .arg(input)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("INGESTOR_CONNECT_TIMEOUT_MS", "2000")
        .output()
        .unwrap()
}

/// Starts the service on `database_url` and asserts that its log, `/readyz` and `check` all
/// name `cause` and show `detail` (PostgreSQL's or the network's own words), and that nothing
/// says only that the pool timed out.
pub(crate) fn assert_cause_named_everywhere(database_url: &str, cause: &str, detail: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ingestor = Ingestor::spawn(database_url, dir.path(), &[]);

    // The log: the loader waits for the database and says why it does not answer.
    assert!(
        ingestor.wait_for_log(cause, TIMEOUT),
        "log does not name `{cause}`: {:#?}",
        ingestor.log_lines()
    );
    let named: Vec<String> = ingestor
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(cause))
        .collect();
    assert!(named.iter().all(|l| l.contains(detail)), "{named:#?}");
    assert!(
        !ingestor
            .log_lines()
            .iter()
            .any(|l| l.contains("Timed out in bb8")),
        "{:#?}",
        ingestor.log_lines()
    );

    // /readyz: 503, with the cause as the reason.
    let (status, body) = ingestor.get("/readyz");
    assert_eq!(status, 503, "{body}");
    let reason = serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains(cause) && reason.contains(detail),
        "readyz reason: {reason}"
    );

    // `ingestor check`: a FAIL line with the cause, exit 1.
    let output = command(database_url, dir.path(), &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("  FAIL  cannot connect to")
                && l.contains(cause)
                && l.contains(detail)),
        "{stdout}"
    );
    drop(ingestor);
}

/// Runs SQL as the private server's superuser.
async fn admin(server: &PrivatePostgres, sql: &str) {
    stack_tests::connect(&server.url("postgres", "postgres"))
        .await
        .unwrap()
        .batch_execute(sql)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_wrong_or_missing_password_is_named_as_failed_authentication() {
    // Arrange: a private server that demands a SCRAM password of the role `loader`.
    let server = PrivatePostgres::start();
    admin(
        &server,
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE loader LOGIN PASSWORD 'right'",
    )
    .await;
    let client = stack_tests::connect(&server.url("postgres", "postgres"))
        .await
        .unwrap();
    let hba: String = client.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all loader 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let url = |password: &str| {
        format!(
            "postgres://loader{password}@127.0.0.1:{}/postgres",
            server.port
        )
    };
    // The server reloads its rules asynchronously: wait until it demands the password.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while stack_tests::connect(&url(":wrong")).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_hba.conf not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Act and assert: a wrong password, then none at all.
    assert_cause_named_everywhere(
        &url(":wrong"),
        "authentication failed",
        "password authentication failed for user",
    );
    let output = command(&url(""), tempfile::tempdir().unwrap().path(), &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("authentication failed")
            && stdout.contains("the server demands a password and none is configured"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_missing_database_is_named() {
    let db = TestDatabase::create().await;
    let url = ingestor_url(&db).replace(&db.name, "no_such_database_here");
    assert_cause_named_everywhere(&url, "database missing", "no_such_database_here");
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_named_as_a_refused_connection() {
    let url = format!("postgres://ingestor@127.0.0.1:{}/events", free_port());
    assert_cause_named_everywhere(&url, "connection refused", "Connection refused");
}

#[tokio::test]
async fn a_server_out_of_connection_slots_is_named_as_too_many_clients() {
    // Arrange: a private server with four connection slots, all held by the test.
    let mut server = PrivatePostgres::start();
    // One statement each: ALTER SYSTEM refuses to run inside the implicit transaction of a
    // multi-statement query.
    admin(&server, "ALTER SYSTEM SET max_connections = 4").await;
    admin(
        &server,
        "ALTER SYSTEM SET superuser_reserved_connections = 0",
    )
    .await;
    server.stop(private_postgres::StopMode::Fast);
    server.start_again();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            stack_tests::connect(&server.url("postgres", "postgres"))
                .await
                .unwrap(),
        );
    }

    // Act and assert
    assert_cause_named_everywhere(
        &server.url("postgres", "postgres"),
        "too many clients",
        "sorry, too many clients already",
    );
    drop(held);
}

#[test]
fn a_closed_standard_output_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://ingestor@127.0.0.1:{}/events", free_port());

    // A reader gone before the first line: the first write fails.
    let mut child = Command::new(INGESTOR)
        .arg("--input-dir")
        .arg(dir.path())
        .arg("check")
        .env("DATABASE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut guard = ChildGuard::new(child);
    let status = guard.wait_with_timeout(TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "nothing on standard error");

    // As people run it: `check | head -2` prints two lines, and check ends without a panic.
    let output = Command::new("bash")
        .args([
            "-c",
            "\"$0\" --input-dir \"$1\" check | head -2; echo \"check exit ${PIPESTATUS[0]}\"",
        ])
        .arg(INGESTOR)
        .arg(dir.path())
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], "configuration");
    assert!(
        lines[2] == "check exit 0" || lines[2] == "check exit 1",
        "{stdout}{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn status_prints_the_backlog_and_why_the_database_is_unreachable() {
    // Arrange: three files waiting, and no database at the configured port.
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 3, 100, 71, Faults::default());
    let bytes: u64 = event_files(dir.path())
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let url = format!("postgres://ingestor@127.0.0.1:{}/events", free_port());

    // Act
    let table = command(&url, dir.path(), &["status"]);
    let json = command(&url, dir.path(), &["status", "--json"]);

    // Assert: the backlog, the cause, exit 1.
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("backlog        3 files, {bytes} bytes")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(
            |l| l.starts_with("database       unreachable: cannot connect to")
                && l.contains("connection refused")
        ),
        "{stdout}"
    );
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["backlog"]["files"], 3);
    assert_eq!(value["backlog"]["bytes"], bytes);
    assert!(value["database_error"]
        .as_str()
        .unwrap()
        .contains("connection refused"));
}

#[tokio::test]
async fn errors_carry_backtraces_only_when_our_setting_asks_and_logs_carry_no_colour_codes() {
    // Arrange: a directory claimed by another database, so that start-up fails with an error.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(ingestor::claim::MARKER_NAME),
        "system_identifier=1\ndatabase=elsewhere\n",
    )
    .unwrap();
    let run = |envs: &[(&str, &str)]| {
        let output = Command::new(INGESTOR)
            .args(["--listen", "127.0.0.1:0", "--input-dir"])
            .arg(dir.path())
            .env("DATABASE_URL", ingestor_url(&db))
            .env_remove("RUST_LIB_BACKTRACE")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    // Act
    let plain = run(&[("RUST_BACKTRACE", "1")]);
    let asked = run(&[("INGESTOR_BACKTRACE", "1")]);

    // Assert: RUST_BACKTRACE alone adds no frames; our setting does. No ANSI codes in a pipe.
    assert!(
        plain.contains("Ingestor failed") && plain.contains("elsewhere"),
        "{plain}"
    );
    assert!(!plain.contains("Stack backtrace"), "{plain}");
    assert!(asked.contains("Stack backtrace"), "{asked}");
    assert!(
        !plain.contains('\u{1b}'),
        "colour codes in a redirected log: {plain}"
    );
}
