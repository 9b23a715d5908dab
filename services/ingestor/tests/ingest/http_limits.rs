//! Issue 12, "clients can starve it": HTTP clients must not be able to take the database's
//! connections, the process's file descriptors or its shutdown away from the loader.
//! - 200 concurrent `/status` requests opened 38 database backends ("too many clients" for
//!   everyone else on the server);
//! - 300 idle TCP connections exhausted the file descriptors and loading stopped;
//! - one half-sent request delayed the exit after SIGTERM until the client left.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stack_tests::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// The `application_name` of the `/status` session (`commands::status::STATUS_APPLICATION_NAME`).
const STATUS_SESSION: &str = "ingestor-status";
/// The body of the 503 a connection beyond the HTTP connection limit gets.
const REFUSED: &str = "too many HTTP connections";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_status_requests_share_one_database_session() {
    // Arrange
    const CLIENTS: usize = 200;
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 2, 100, 31, Faults::default());
    let ingestor = spawn_app(&ingestor_url(&db), dir.path(), &[]).await;
    wait_for_ledger(&db, dir.path(), 2, Duration::from_secs(30)).await;
    let port = ingestor.port;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(max_backends(
        db.url.clone(),
        db.name.clone(),
        sampling.clone(),
    ));

    // Act: 200 clients at once, each retrying (as a client should) when refused for the
    // connection limit, until it has a report.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(status_report(port)))
        .collect();
    let mut refusals = 0;
    let mut as_of = std::collections::BTreeSet::new();
    for client in clients {
        let (body, refused) = client.await.unwrap();
        refusals += refused;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["totals"]["files_loaded"], 2, "{json:#}");
        as_of.insert(json["as_of"].as_str().unwrap().to_owned());
    }
    // Another client of the server connects and is served while the ingestor runs.
    let other: i32 = db
        .client()
        .await
        .query_one("SELECT 1", &[])
        .await
        .unwrap()
        .get(0);
    sampling.store(false, Ordering::Relaxed);
    let (status_sessions, ingestor_sessions) = sampler.await.unwrap();

    // Assert
    assert_eq!(other, 1);
    assert!(
        status_sessions <= 1,
        "/status held {status_sessions} database sessions at once"
    );
    // The loaders' pool (4 by default) plus the one status session, never one per request.
    assert!(
        ingestor_sessions <= 5,
        "the ingestor held {ingestor_sessions} database sessions at once"
    );
    eprintln!(
        "{CLIENTS} clients: {} distinct snapshots, {refusals} refusals retried, at most \
         {status_sessions} status session(s) and {ingestor_sessions} ingestor sessions",
        as_of.len()
    );
    drop(ingestor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_idle_connections_stop_neither_loading_nor_new_requests() {
    // Arrange: a descriptor limit 300 idle connections would exhaust, as in the finding.
    const IDLE: usize = 300;
    const NOFILE: u32 = 256;
    let db = TestDatabase::create().await;
    let input = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    generate(source.path(), 20, 500, 32, Faults::default());
    let files = event_files(source.path());
    let expected = expected(&files);
    let ingestor = Ingestor::spawn(&ingestor_url(&db), input.path(), &[]);
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg(format!("--pid={}", ingestor.pid()))
        .status()
        .unwrap();
    assert!(limited.success(), "prlimit failed");
    let port = ingestor.port;

    // Act: 300 clients that connect and send nothing, reconnecting whenever the ingestor closes
    // them (refused, or timed out), for as long as the files load.
    let attacking = Arc::new(AtomicBool::new(true));
    let connected = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..IDLE)
        .map(|_| tokio::spawn(idle_client(port, attacking.clone(), connected.clone())))
        .collect();
    // The files land once the clients have opened as many connections as there are clients.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::Relaxed) < IDLE {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {IDLE} idle clients connected",
            connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for file in &files {
        let staged = source.path().join(".staged");
        std::fs::copy(file, &staged).unwrap();
        std::fs::rename(&staged, input.path().join(file.file_name().unwrap())).unwrap();
    }
    let (live, body) = tokio::time::timeout(Duration::from_secs(30), raw_get(port, "/livez"))
        .await
        .expect("a new request was neither answered nor refused");
    let descriptors = std::fs::read_dir(format!("/proc/{}/fd", ingestor.pid()))
        .unwrap()
        .count();
    wait_for_ledger(&db, input.path(), files.len(), Duration::from_secs(90)).await;
    attacking.store(false, Ordering::Relaxed);
    for attacker in attackers {
        attacker.abort();
    }

    // Assert
    assert_exact(&db, &expected).await;
    assert!(
        live == 200 || (live == 503 && body.contains(REFUSED)),
        "/livez under 300 idle connections: {live} {body}"
    );
    assert!(
        descriptors < NOFILE as usize / 2,
        "{descriptors} descriptors open under {IDLE} idle connections (limit {NOFILE})"
    );
    let logs = ingestor.log_lines();
    assert!(
        !logs.iter().any(|l| l.contains("Too many open files")),
        "descriptors ran out: {logs:#?}"
    );
    let metrics = ingestor.get("/metrics").1;
    eprintln!(
        "{IDLE} idle clients: /livez {live}, {descriptors} descriptors open; {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("ingestor_http_"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    drop(ingestor);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_sent_request_does_not_hold_up_the_exit_after_sigterm() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ingestor = Ingestor::spawn(
        &ingestor_url(&db),
        dir.path(),
        &[("INGESTOR_DRAIN_TIMEOUT_MS", "500")],
    );
    let mut client = TcpStream::connect(("127.0.0.1", ingestor.port))
        .await
        .unwrap();
    client
        .write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // The request is in, half of it: one more `/livez` shows the server took the connection.
    assert_eq!(ingestor.get("/livez").0, 200);

    // Act
    signal(ingestor.pid(), "TERM");
    let exited = tokio::task::block_in_place(|| ingestor.wait_for_exit(Duration::from_secs(30)));

    // Assert: it exited, normally, while the client still holds its half request.
    let status = exited.expect("the ingestor did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        ingestor.wait_for_log(
            "Drain timeout reached; closing HTTP connections still open",
            Duration::from_secs(1)
        ),
        "{:#?}",
        ingestor.log_lines()
    );
    drop(client);
}

/// GETs `/status` until it is a report (retrying a refusal for the connection limit); the
/// report and how many refusals it took.
async fn status_report(port: u16) -> (String, usize) {
    let mut refusals = 0;
    loop {
        let (status, body) = raw_get(port, "/status").await;
        match status {
            200 => return (body, refusals),
            // Refused for the connection limit: with the 503, or (under a flood, when too many
            // refusals are in flight) reset before it.
            503 if body.contains(REFUSED) => refusals += 1,
            0 => refusals += 1,
            _ => panic!("/status answered {status}: {body}"),
        }
        assert!(refusals < 1_000, "refused {refusals} times");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `GET path` on a new connection: (status code, body); (0, "") when the connection failed.
async fn raw_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    stack_tests::parse_http_response(&String::from_utf8_lossy(&response))
}

/// Holds a connection that sends nothing; when the server closes it, opens another. Counts its
/// connections in `connected`.
async fn idle_client(port: u16, attacking: Arc<AtomicBool>, connected: Arc<AtomicUsize>) {
    while attacking.load(Ordering::Relaxed) {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
            connected.fetch_add(1, Ordering::Relaxed);
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        }
        // Reconnects within a second: pressure enough to keep every connection slot taken,
        // without a connect storm that would slow the other tests running beside this one.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The most database sessions seen at once while `sampling`: (the `/status` session's, all of
/// the ingestor role's), sampled from `pg_stat_activity` every 5 ms.
async fn max_backends(url: String, database: String, sampling: Arc<AtomicBool>) -> (i64, i64) {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let (mut status, mut all) = (0, 0);
    while sampling.load(Ordering::Relaxed) {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE application_name = $2), count(*) \
                 FROM pg_stat_activity WHERE datname = $1 AND usename = 'ingestor'",
                &[&database, &STATUS_SESSION],
            )
            .await
            .unwrap();
        status = status.max(row.get(0));
        all = all.max(row.get(1));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (status, all)
}
