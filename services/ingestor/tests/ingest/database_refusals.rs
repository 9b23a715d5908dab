//! A healthy database refusing the ingestor's work: a table another session holds locked, a
//! revoked grant, a setting PostgreSQL rejects. Whatever it refuses, no connection goes back to
//! the pool out of step with its server (no "unexpected message from server", `/readyz` steady
//! while the database answers), no valid file is quarantined, `/readyz` names an error no retry
//! fixes, and once the cause is gone every file loads exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ingestor::store::pool::{classify, Failure};
use stack_tests::TestDatabase;

use crate::helpers::*;

/// Files published while the database refuses them.
const FILES: u64 = 6;
/// Rows per file.
const ROWS: u64 = 500;
/// Some rejected rows in every file (so `rejected_rows` is written too) and some duplicates.
const FAULTS: Faults = Faults {
    invalid: 0.05,
    duplicate: 0.02,
    late: 0.0,
};
/// What tokio-postgres says when a reply does not fit the request it is read for.
const DESYNC: &str = "unexpected message from server";
/// The log message of a failed batch that will be retried (`DatabaseFailed`).
const RETRY_MESSAGE: &str = "Database error; transaction rolled back, will retry";
/// The log message of a batch failed for a reason no retry fixes (`LoadingBlocked`).
const BLOCKED_MESSAGE: &str = "Loading fails for a reason no retry fixes";
/// Failed attempts the table lock is held for.
const LOCKED_ATTEMPTS: usize = 10;
/// Generous bound for anything the test waits for.
const BOUND: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_copy_that_cannot_start_for_a_table_lock_costs_its_connection_not_the_pools_sync() {
    // Arrange: an idle, ready ingestor whose COPY gives up after 50 ms waiting for a lock.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let ingestor = Ingestor::spawn(
        &ingestor_url(&db),
        dir.path(),
        &[("INGESTOR_CONFLICT_WAIT_MS", "50")],
    );
    wait_for_readyz(&ingestor, 200, "at start").await;
    let watch = ReadyzWatch::start(ingestor.port);
    // Another session holds `events` locked: every COPY into it times out before it starts,
    // which is where tokio-postgres answers one request with two replies.
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    // Act: files arrive while the lock is held; it is released after several attempts.
    generate(dir.path(), FILES, ROWS, 71, FAULTS);
    let attempts = wait_for_log_count(&ingestor, "lock timeout", LOCKED_ATTEMPTS).await;
    locker.batch_execute("COMMIT").await.unwrap();
    wait_for_ledger(&db, dir.path(), FILES as usize, BOUND).await;
    // A few more readiness answers once everything loaded.
    wait_for_readyz(&ingestor, 200, "after the load").await;
    let answers = watch.stop();

    // Assert
    let logs = ingestor.log_lines();
    eprintln!(
        "lock held for {attempts} failed attempts; /readyz answered {} times; {} connections discarded",
        answers.len(),
        discarded_connections(&ingestor)
    );
    assert_exact(&db, &expected(&event_files(dir.path()))).await;
    assert!(
        attempts >= LOCKED_ATTEMPTS,
        "the lock did not make COPYs time out: {logs:#?}"
    );
    assert!(
        logs.iter()
            .filter(|l| l.contains("lock timeout"))
            .all(|l| l.contains(RETRY_MESSAGE)),
        "a lock timeout is transient: retried, never blocking or quarantining: {logs:#?}"
    );
    let desynced: Vec<&String> = logs.iter().filter(|l| l.contains(DESYNC)).collect();
    assert!(
        desynced.is_empty(),
        "a connection went out of step with its server: {desynced:#?}"
    );
    let not_ready: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        not_ready.is_empty(),
        "/readyz flapped while the database was healthy ({} of {} answers): {not_ready:#?}",
        not_ready.len(),
        answers.len()
    );
    assert!(
        discarded_connections(&ingestor) > 0,
        "no connection was closed after a COPY that could not start"
    );
}

#[tokio::test]
async fn a_revoked_grant_makes_readyz_say_why_quarantines_nothing_and_loads_once_restored() {
    // Arrange: the ingestor role may not insert rejected rows; every file has some.
    let db = TestDatabase::create().await;
    let admin = db.client().await;
    admin
        .batch_execute("REVOKE INSERT ON rejected_rows FROM ingestor")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), FILES, ROWS, 72, FAULTS);

    // Act
    // One loader, so that its backoff alone paces the attempts counted below.
    let ingestor = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[("INGESTOR_LOADERS", "1")]);
    let body = wait_for_readyz(&ingestor, 503, "with the grant revoked").await;
    // Several failed attempts, so the backoff has had the time to grow to its cap.
    let attempts = wait_for_log_count(&ingestor, BLOCKED_MESSAGE, 6).await;
    let still_waiting = csv_names(dir.path()).len();
    let failed_while_revoked = failed_files(&db).await;
    admin
        .batch_execute("GRANT INSERT ON rejected_rows TO ingestor")
        .await
        .unwrap();
    wait_for_ledger(&db, dir.path(), FILES as usize, BOUND).await;
    wait_for_readyz(&ingestor, 200, "after the grant was restored").await;

    // Assert
    let delays = retry_delays(&ingestor.log_lines(), BLOCKED_MESSAGE);
    eprintln!("grant revoked: /readyz said {body}; {attempts} attempts, delays {delays:?} ms");
    assert!(
        body.contains("permission denied") && body.contains("42501"),
        "/readyz does not say why: {body}"
    );
    assert!(attempts >= 6, "{:#?}", ingestor.log_lines());
    assert_eq!(
        (still_waiting, failed_while_revoked),
        (FILES as usize, 0),
        "a valid file was quarantined while the grant was missing"
    );
    // Backoff, not a busy loop: the delays grew to the cap (FAST: 50 ms doubling up to 500 ms,
    // drawn between half and all of it), whatever the machine's speed.
    assert!(
        delays.iter().any(|d| *d >= 250),
        "the retry delay never grew: {delays:?}"
    );
    assert_exact(&db, &expected(&event_files(dir.path()))).await;
    assert_eq!(failed_files(&db).await, 0);
    assert!(
        !std::fs::read_dir(dir.path().join("failed"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "a file was moved to failed/"
    );
    let logs = ingestor.log_lines();
    assert!(
        !logs.iter().any(|l| l.contains(DESYNC)),
        "a connection went out of step with its server: {logs:#?}"
    );
}

#[test]
fn a_timeout_past_postgresqls_range_stops_start_up_naming_the_key_and_the_value() {
    for (key, env) in [
        ("conflict_wait_ms", "INGESTOR_CONFLICT_WAIT_MS"),
        ("statement_timeout_ms", "INGESTOR_STATEMENT_TIMEOUT_MS"),
        (
            "idle_in_transaction_timeout_ms",
            "INGESTOR_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(INGESTOR)
            .args(["--listen", "127.0.0.1:0", "--input-dir"])
            .arg(dir.path())
            .env("DATABASE_URL", "postgres://ingestor@127.0.0.1:1/none")
            .env(env, "99999999999")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{key}: {stderr}");
        assert!(
            stderr.contains(&format!("`{key}` = `99999999999`")) && stderr.contains("2147483647"),
            "{key}: {stderr}"
        );
    }
}

#[tokio::test]
async fn only_row_data_sqlstates_are_taken_for_bad_row_data() {
    // Arrange: real errors from a real server.
    let db = TestDatabase::create().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, n int CHECK (n > 0), s varchar(2) NOT NULL)",
        )
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (1, 1, 'a')")
        .await
        .unwrap();
    let error_of = |sql: &'static str| {
        let client = &client;
        async move {
            let e = client.batch_execute(sql).await.unwrap_err();
            anyhow::Error::new(e).context("a loading step")
        }
    };

    // Act
    let cases = [
        ("SET lock_timeout = '99999999999ms'", "setting"),
        ("SELECT * FROM missing_table", "blocking"),
        ("SELECT missing_column FROM t", "blocking"),
        ("INSERT INTO t VALUES (2, -1, 'a')", "row"),
        ("INSERT INTO t VALUES (3, 1, NULL)", "row"),
        ("INSERT INTO t VALUES (4, 1, 'abc')", "row"),
        ("INSERT INTO t VALUES (1, 1, 'a')", "transient"),
        // Last: it leaves the session in the least-privilege role, which may not read `t`.
        ("SET ROLE ingestor; SELECT * FROM t", "permission"),
    ];
    let mut got = Vec::new();
    for (sql, _) in cases {
        let error = error_of(sql).await;
        got.push(match classify(&error) {
            Failure::RowData => "row".to_owned(),
            Failure::Blocking(db) => format!("blocking {}", db.code().code()),
            Failure::Unfit(why) => format!("unfit {why}"),
            Failure::Transient => "transient".to_owned(),
            Failure::PermissionDenied(db) => format!("permission {}", db.code().code()),
            Failure::Conflict => "conflict".to_owned(),
        });
    }

    // Assert
    assert_eq!(
        got,
        [
            "blocking 22023",
            "blocking 42P01",
            "blocking 42703",
            "row",
            "row",
            "row",
            "transient",
            "permission 42501"
        ]
    );
}

/// Polls `/readyz` on another thread until stopped; every answer is kept.
struct ReadyzWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(u16, String)>>,
}

impl ReadyzWatch {
    fn start(port: u16) -> ReadyzWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(http_get(port, "/readyz"));
                    std::thread::sleep(Duration::from_millis(20));
                }
                answers
            }
        });
        ReadyzWatch { stop, thread }
    }

    fn stop(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Polls `/readyz` until it answers `status`; returns the body.
///
/// # Panics
/// When [`BOUND`] passes first, with the last answer.
async fn wait_for_readyz(ingestor: &Ingestor, status: u16, when: &str) -> String {
    let started = Instant::now();
    loop {
        let (got, body) = ingestor.get("/readyz");
        if got == status {
            return body;
        }
        assert!(
            started.elapsed() < BOUND,
            "/readyz {when}: still {got} ({body}), expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `count` log lines contain `needle` (or [`BOUND`] passes); returns how many do.
async fn wait_for_log_count(ingestor: &Ingestor, needle: &str, count: usize) -> usize {
    let started = Instant::now();
    loop {
        let n = ingestor
            .log_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count();
        if n >= count || started.elapsed() >= BOUND {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `retry_in_ms` of every log line whose message starts with `message`.
fn retry_delays(logs: &[String], message: &str) -> Vec<u64> {
    logs.iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|json| {
            json["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .filter_map(|json| json["retry_in_ms"].as_u64())
        .collect()
}

/// Ledger entries recorded as failed.
async fn failed_files(db: &TestDatabase) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM ingest_files WHERE status = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// `ingestor_database_connections_discarded_total` from `/metrics`.
fn discarded_connections(ingestor: &Ingestor) -> u64 {
    let (_, metrics) = ingestor.get("/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ingestor_database_connections_discarded_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
