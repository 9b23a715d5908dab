//! The database failing under a running ingestor: connections cut at random moments by a proxy,
//! and the whole server stopped and started again. Whatever happens, the process stays up,
//! retries, and the database ends up exact; readiness follows the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stack_tests::TestDatabase;

use crate::helpers::*;

#[path = "support/chaos_proxy.rs"]
mod chaos_proxy;
#[path = "support/private_postgres.rs"]
pub(crate) mod private_postgres;

use chaos_proxy::{ChaosProxy, Cut};
use private_postgres::{PrivatePostgres, StopMode};

/// The log message of a failed batch (`DatabaseFailed`).
const RETRY_MESSAGE: &str = "Database error; transaction rolled back, will retry";
/// Rows per generated file.
const ROWS: u64 = 2_000;
/// Injected faults: some invalid rows, some duplicated events.
const FAULTS: Faults = Faults {
    invalid: 0.01,
    duplicate: 0.02,
    late: 0.0,
};
/// How long any readiness transition may take.
const READINESS_BOUND: Duration = Duration::from_secs(15);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_cuts_connections_at_random_moments_still_ends_exact() {
    // Arrange
    const BACKLOG: u64 = 40;
    const WAVES: u64 = 4;
    const WAVE_FILES: u64 = 10;
    const CHAOS_FOR: Duration = Duration::from_secs(15);
    let seed = chaos_seed();
    let db = TestDatabase::create().await;
    let proxy = Arc::new(ChaosProxy::start(tcp_address(&db)).await);
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), BACKLOG, ROWS, seed, FAULTS);
    // One file per transaction: short enough that some commit between cuts, so cuts also land
    // on COMMITs whose outcome the ingestor cannot know.
    let mut ingestor = Ingestor::spawn(
        &format!("postgres://ingestor@{}/{}", proxy.addr, db.name),
        dir.path(),
        &[("INGESTOR_BATCH_MAX_FILES", "1")],
    );
    let pid = ingestor.pid();

    // Act: cut every connection at random moments while more files arrive in waves.
    let chaos = tokio::spawn(cut_at_random_moments(
        proxy.clone(),
        StdRng::seed_from_u64(seed),
        CHAOS_FOR,
    ));
    for wave in 1..=WAVES {
        tokio::time::sleep(CHAOS_FOR / (WAVES as u32 + 1)).await;
        let input = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            generate(&input, WAVE_FILES, ROWS, seed.wrapping_add(wave), FAULTS);
        })
        .await
        .unwrap();
        assert_still_running(&mut ingestor, pid);
    }
    let (rounds, cut) = chaos.await.unwrap();
    assert_still_running(&mut ingestor, pid);
    let files = (BACKLOG + WAVES * WAVE_FILES) as usize;
    wait_for_ledger(&db, dir.path(), files, Duration::from_secs(45)).await;

    // Assert
    let logs = ingestor.log_lines();
    let errors = database_errors(&logs);
    eprintln!(
        "chaos seed {seed}: {rounds} rounds cut {cut} of {} connections; {} failed batches: {:#?}",
        proxy.accepted(),
        errors.len(),
        tally(&errors)
    );
    assert_exact(&db, &expected(&event_files(dir.path()))).await;
    assert!(cut > 0, "the proxy never cut a live connection");
    assert!(
        !errors.is_empty(),
        "no '{RETRY_MESSAGE}' in the ingestor's logs: the cuts never hit it"
    );
    assert!(
        errors.iter().any(|e| e.contains("COPY")),
        "no cut hit a COPY (seed {seed})"
    );
    assert_still_running(&mut ingestor, pid);
    assert_started_once(&logs);
    // A pooled connection cut in the last round may fail one check; then the next one passes.
    wait_for_readyz(&ingestor, 200, READINESS_BOUND, "after the chaos").await;
}

#[tokio::test]
async fn postgresql_stopped_and_started_mid_run_ends_exact_and_readiness_follows() {
    // Arrange
    const BACKLOG: u64 = 40;
    const WAVE_FILES: u64 = 6;
    const DOWN_FOR: Duration = Duration::from_millis(1_500);
    const CYCLES: [StopMode; 4] = [
        StopMode::Immediate,
        StopMode::Fast,
        StopMode::Immediate,
        StopMode::Fast,
    ];
    let seed = chaos_seed();
    let mut server = PrivatePostgres::start();
    let admin = stack_tests::connect(&server.url("postgres", "postgres"))
        .await
        .unwrap();
    admin.batch_execute("CREATE DATABASE ingest").await.unwrap();
    drop(admin);
    let schema = stack_tests::connect(&server.url("postgres", "ingest"))
        .await
        .unwrap();
    stack_tests::apply_sql_scripts(&schema).await.unwrap();
    // Closed now: a client of ours must not be around when the server goes down.
    drop(schema);
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), BACKLOG, ROWS, seed, FAULTS);
    // Small batches: some commit while the server is up, others are cut by the next stop.
    let mut ingestor = Ingestor::spawn(
        &server.url("ingestor", "ingest"),
        dir.path(),
        &[("INGESTOR_BATCH_MAX_FILES", "4")],
    );
    let pid = ingestor.pid();
    wait_for_readyz(&ingestor, 200, READINESS_BOUND, "at start").await;

    // Act: stop the server under the running ingestor, let files arrive while it is down, start
    // it again; several times, the first while the backlog is still loading.
    let mut recoveries = Vec::new();
    for (cycle, mode) in (1_u64..).zip(CYCLES) {
        server.stop(mode);
        let stopped = Instant::now();
        wait_for_readyz(
            &ingestor,
            503,
            READINESS_BOUND,
            &format!("after stop {cycle} ({mode:?})"),
        )
        .await;
        generate(
            dir.path(),
            WAVE_FILES,
            ROWS,
            seed.wrapping_add(cycle),
            FAULTS,
        );
        tokio::time::sleep(DOWN_FOR.saturating_sub(stopped.elapsed())).await;
        server.start_again();
        let recovery = wait_for_readyz(
            &ingestor,
            200,
            READINESS_BOUND,
            &format!("after start {cycle}"),
        )
        .await;
        recoveries.push(recovery);
        assert_still_running(&mut ingestor, pid);
        // Up for a moment: some of the backlog loads before the next stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let client = stack_tests::connect(&server.url("postgres", "ingest"))
        .await
        .unwrap();
    let files = (BACKLOG + CYCLES.len() as u64 * WAVE_FILES) as usize;
    wait_for_ledger_with(&client, dir.path(), files, Duration::from_secs(45)).await;

    // Assert
    let logs = ingestor.log_lines();
    let errors = database_errors(&logs);
    eprintln!(
        "seed {seed}: readiness came back after {recoveries:?}; {} failed batches: {:#?}",
        errors.len(),
        tally(&errors)
    );
    assert_exact_with(&client, &expected(&event_files(dir.path()))).await;
    assert!(
        recoveries.iter().all(|r| *r <= READINESS_BOUND),
        "readiness must return within {READINESS_BOUND:?} of the database: {recoveries:?}"
    );
    assert!(
        !errors.is_empty(),
        "no '{RETRY_MESSAGE}' in the ingestor's logs: the outages never hit it"
    );
    assert_still_running(&mut ingestor, pid);
    assert_started_once(&logs);
}

/// The randomness seed: `CHAOS_SEED` to replay a run, otherwise a fresh one (printed by the
/// tests, so a failure can be replayed).
fn chaos_seed() -> u64 {
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(seed) => seed.parse().expect("CHAOS_SEED must be a u64"),
        Err(_) => rand::rng().random(),
    };
    eprintln!("chaos seed: {seed} (replay with CHAOS_SEED={seed})");
    seed
}

/// Every 50–300 ms (drawn from `rng`), cuts every live connection, half closed and half reset,
/// until `duration` is over. Returns (rounds, connections cut).
async fn cut_at_random_moments(
    proxy: Arc<ChaosProxy>,
    mut rng: StdRng,
    duration: Duration,
) -> (u64, usize) {
    let until = Instant::now() + duration;
    let (mut rounds, mut cut) = (0, 0);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..=300))).await;
        rounds += 1;
        cut += proxy.cut_all(|| {
            if rng.random_bool(0.5) {
                Cut::Reset
            } else {
                Cut::Close
            }
        });
    }
    (rounds, cut)
}

/// Polls `/readyz` every [`POLL`] until it answers `status`; returns how long that took.
///
/// # Panics
/// When `bound` passes first, with the last answer.
async fn wait_for_readyz(
    ingestor: &Ingestor,
    status: u16,
    bound: Duration,
    when: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        let (got, body) = ingestor.get("/readyz");
        if got == status {
            if status == 503 {
                assert!(body.contains("reason"), "a 503 without a reason: {body}");
            }
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "/readyz {when}: still {got} ({body}) after {:?}, expected {status} within {bound:?}",
            started.elapsed()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The ingestor is the very process that was started, and it has not exited.
fn assert_still_running(ingestor: &mut Ingestor, pid: u32) {
    assert_eq!(ingestor.pid(), pid, "the ingestor was replaced");
    if let Some(status) = ingestor.exit_status() {
        panic!(
            "the ingestor exited with {status}: {:#?}",
            ingestor.log_lines()
        );
    }
}

/// The process started exactly once: no restart hid a crash.
fn assert_started_once(logs: &[String]) {
    let starts = logs
        .iter()
        .filter(|l| l.contains("\"Ingestor starting\""))
        .count();
    assert_eq!(starts, 1, "the ingestor started {starts} times");
}

/// The outermost error message of every failed batch in `logs`.
fn database_errors(logs: &[String]) -> Vec<String> {
    logs.iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|json| json["message"] == RETRY_MESSAGE)
        .map(|json| json["error.message"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// How often each message occurs, most frequent first.
fn tally(messages: &[String]) -> Vec<(usize, &str)> {
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for message in messages {
        *counts.entry(message).or_default() += 1;
    }
    let mut tally: Vec<(usize, &str)> = counts.into_iter().map(|(m, n)| (n, m)).collect();
    tally.sort_unstable_by(|a, b| b.cmp(a));
    tally
}
