//! Harness for ingestor tests: spawn the binary, talk to its HTTP endpoints, generate input, and
//! check the database against the contract's own reading of the files.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::app::{spawn_app, TestApp};
use event_contract::{EventReader, ExtraColumnPolicy, ValidationContext};
pub use stack_tests::http_get;
use stack_tests::{ChildGuard, TestDatabase};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const INGESTOR: &str = env!("CARGO_BIN_EXE_ingestor");

/// The test database's URL for the least-privilege `ingestor` role (trust auth locally).
pub fn ingestor_url(db: &TestDatabase) -> String {
    role_url(db, "ingestor")
}

/// The test database's URL for a login `role` of sql/001_roles.sql (trust auth locally).
pub fn role_url(db: &TestDatabase, role: &str) -> String {
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{role}@{host}:{port}/{}", db.name)
}

/// A running ingestor process, killed when dropped.
pub struct Ingestor {
    guard: ChildGuard,
    pub port: u16,
    logs: Arc<Mutex<Vec<String>>>,
    /// Holds its ready file (`--ready-file`).
    _ready_dir: tempfile::TempDir,
}

/// Settings that make tests fast: short settle and rescan intervals, quick retries.
pub const FAST: [(&str, &str); 5] = [
    ("INGESTOR_SETTLE_MS", "100"),
    ("INGESTOR_RESCAN_INTERVAL_MS", "100"),
    ("INGESTOR_RETRY_INITIAL_MS", "50"),
    ("INGESTOR_RETRY_MAX_MS", "500"),
    ("INGESTOR_CONNECT_TIMEOUT_MS", "2000"),
];

/// `ingestor run` on `input` as the tests start it: JSON logs, any free port, the fast settings.
pub fn ingestor_run_command(database_url: &str, input: &Path) -> Command {
    let mut command = Command::new(INGESTOR);
    command
        .args([
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--input-dir",
        ])
        .arg(input)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        .envs(FAST.iter().copied());
    command
}

impl Ingestor {
    /// Starts `ingestor run` on `input` and waits until it listens.
    pub fn spawn(database_url: &str, input: &Path, envs: &[(&str, &str)]) -> Ingestor {
        let ready_dir = tempfile::tempdir().unwrap();
        let ready_file = ready_dir.path().join("ready.json");
        let mut child = ingestor_run_command(database_url, input)
            .arg("--ready-file")
            .arg(&ready_file)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("TEST_LOG").is_some() {
                        eprintln!("[ingestor] {line}");
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut ingestor = Ingestor {
            guard: ChildGuard::new(child),
            port: 0,
            logs,
            _ready_dir: ready_dir,
        };
        ingestor.port = match ingestor
            .guard
            .wait_for_ready_file(&ready_file, Duration::from_secs(20))
        {
            Ok(listen) => listen.port(),
            Err(why) => panic!("ingestor did not start: {why}: {:#?}", ingestor.log_lines()),
        };
        ingestor
    }

    /// Everything it logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// SIGKILL, and wait for it to be gone.
    #[allow(dead_code)]
    pub fn kill(mut self) {
        let _ = self.guard.child_mut().kill();
        let _ = self.guard.child_mut().wait();
    }

    /// SIGTERM, and wait up to `timeout` for it to exit.
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        signal(self.pid(), "TERM");
        self.guard
            .wait_with_timeout(timeout)
            .expect("ingestor did not exit after SIGTERM")
    }

    /// `GET path` on its HTTP port: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
    }
}

/// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) to a PID.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// SIGSTOP, and wait until every thread of the process is stopped. `kill` returns before they
/// are: one thread takes the signal and stops the others when the scheduler next runs it, and
/// on a loaded machine the rest ran on meanwhile (a COMMIT answered just then was acted on).
pub fn freeze(pid: u32) {
    signal(pid, "STOP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_threads_stopped(pid) {
        assert!(
            Instant::now() < deadline,
            "{pid} did not stop after SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether every thread in `/proc/<pid>/task` is in state `T` (stopped by a signal).
fn all_threads_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|task| task.unwrap().path().join("stat"))
        .all(|stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            let stat = std::fs::read_to_string(stat).unwrap_or_default();
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
}

/// Fault-injection knobs for [`generate`].
#[derive(Clone, Copy, Default)]
pub struct Faults {
    pub invalid: f64,
    pub duplicate: f64,
    pub late: f64,
}

/// Writes `files` files of `rows` rows into `dir` with the real generator (as a library).
pub fn generate(dir: &Path, files: u64, rows: u64, seed: u64, faults: Faults) {
    let settings = generator::config::RawSettings {
        out: dir.to_owned(),
        rate: 10_000_000.0,
        rows,
        files,
        seed: Some(seed),
        invalid_ratio: faults.invalid,
        duplicate_ratio: faults.duplicate,
        late_ratio: faults.late,
        ..Default::default()
    }
    .validate()
    .unwrap();
    generator::startup::generate(&settings, &CancellationToken::new()).unwrap();
}

/// Every event file under `dir`, including the processed/ and failed/ subdirectories.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in [dir.to_owned(), dir.join("processed"), dir.join("failed")] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() && path.extension().is_some_and(|e| e == "csv") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// What the database must hold, according to the contract's own reading of the files.
#[derive(Debug, Default)]
pub struct Expected {
    pub files: usize,
    pub lines: u64,
    pub rejected: u64,
    pub unique_ids: HashSet<Uuid>,
}

pub fn expected(files: &[PathBuf]) -> Expected {
    let mut expected = Expected {
        files: files.len(),
        ..Expected::default()
    };
    for path in files {
        let file = std::fs::File::open(path).unwrap();
        let reader =
            EventReader::new(file, ValidationContext::now(), ExtraColumnPolicy::Ignore).unwrap();
        for row in reader {
            expected.lines += 1;
            match row.unwrap().outcome {
                Ok(event) => {
                    expected.unique_ids.insert(*event.event_id.as_uuid());
                }
                Err(_) => expected.rejected += 1,
            }
        }
    }
    expected
}

/// Waits until `files` ledger entries are finished and the input directory holds no event file.
pub async fn wait_for_ledger(db: &TestDatabase, input: &Path, files: usize, timeout: Duration) {
    wait_for_ledger_with(&db.client().await, input, files, timeout).await;
}

/// [`wait_for_ledger`] through any client, e.g. one connected to a private server.
pub async fn wait_for_ledger_with(
    client: &tokio_postgres::Client,
    input: &Path,
    files: usize,
    timeout: Duration,
) {
    stack_tests::wait_for_finished_files(client, input, files, timeout, String::new).await;
}

/// The database holds exactly the valid unique events of the files, every file once, and every
/// ledger entry's lines add up.
pub async fn assert_exact(db: &TestDatabase, expected: &Expected) {
    assert_exact_with(&db.client().await, expected).await;
}

/// The ids in the events table.
pub async fn stored_event_ids(client: &tokio_postgres::Client) -> HashSet<Uuid> {
    client
        .query("SELECT event_id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// [`assert_exact`] through any client, e.g. one connected to a private server.
pub async fn assert_exact_with(client: &tokio_postgres::Client, expected: &Expected) {
    let stored = stored_event_ids(client).await;
    let missing = expected.unique_ids.difference(&stored).count();
    let extra = stored.difference(&expected.unique_ids).count();
    assert_eq!(
        (missing, extra),
        (0, 0),
        "events differ from the files' valid unique events"
    );
    let row = client
        .query_one(
            "SELECT count(*), sum(lines)::bigint, sum(accepted)::bigint, sum(duplicates)::bigint, sum(rejected)::bigint, \
             count(*) FILTER (WHERE lines <> accepted + duplicates + rejected) FROM ingest_files WHERE status = 'loaded'",
            &[],
        )
        .await
        .unwrap();
    let (files, lines, accepted, _duplicates, rejected, unbalanced): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert_eq!(
        files as usize, expected.files,
        "every file loaded exactly once"
    );
    assert_eq!(lines as u64, expected.lines, "every line accounted for");
    assert_eq!(accepted as usize, expected.unique_ids.len());
    assert_eq!(rejected as u64, expected.rejected);
    assert_eq!(unbalanced, 0, "a ledger entry whose lines do not add up");
    let rejected_rows: i64 = client
        .query_one("SELECT count(*) FROM rejected_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rejected_rows as u64, expected.rejected,
        "every rejection stored"
    );
}

impl Ingestor {
    /// Its exit status if it has exited (and was reaped), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.guard.child_mut().try_wait().unwrap()
    }
}

impl Ingestor {
    /// Waits up to `timeout` for it to exit on its own, e.g. after a [`signal`]; `None` if it
    /// is still running.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.guard.wait_with_timeout(timeout)
    }

    /// Waits up to `timeout` until one of its log lines contains `needle`; whether one did.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_lines().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The ledger and the tables agree, whatever moment the ingestor stopped at: no entry is left
/// `loading`, every entry's events and rejected rows are all stored (no file is partially
/// loaded), and every event belongs to a file the ledger calls loaded.
pub async fn assert_ledger_matches_tables(db: &TestDatabase) {
    let client = db.client().await;
    let loading: i64 = client
        .query_one(
            "SELECT count(*) FROM ingest_files WHERE status = 'loading'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        loading, 0,
        "a ledger entry was committed while still loading"
    );
    let partial: Vec<String> = client
        .query(
            "SELECT format('%s: accepted %s, events %s; rejected %s, rejected_rows %s', \
                 f.file_name, f.accepted, coalesce(e.n, 0), f.rejected, coalesce(r.n, 0)) \
             FROM ingest_files f \
             LEFT JOIN (SELECT source_file_id, count(*) AS n FROM events GROUP BY 1) e \
                 ON e.source_file_id = f.file_id \
             LEFT JOIN (SELECT file_id, count(*) AS n FROM rejected_rows GROUP BY 1) r \
                 ON r.file_id = f.file_id \
             WHERE f.accepted <> coalesce(e.n, 0) OR f.rejected <> coalesce(r.n, 0)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(partial.is_empty(), "partially stored files: {partial:#?}");
    let orphans = stack_tests::orphan_events(&client).await;
    assert_eq!(
        orphans, 0,
        "events of a file the ledger does not call loaded"
    );
}

/// Names of the event files directly in `dir` (not in its subdirectories).
pub fn csv_names(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "csv"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The test database's server as a TCP address, for a proxy in front of it to forward to.
pub fn tcp_address(db: &TestDatabase) -> std::net::SocketAddr {
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        tokio_postgres::config::Host::Unix(path) => panic!(
            "a proxy test needs PostgreSQL over TCP, but TEST_DATABASE_URL names the socket {}",
            path.display()
        ),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .unwrap()
        .next()
        .unwrap_or_else(|| panic!("{host} does not resolve"))
}

/// The (content hash, size) of every loaded ledger entry: the identity an archived file must
/// have to count as loaded byte for byte.
pub async fn loaded_identities(db: &TestDatabase) -> BTreeSet<(Vec<u8>, i64)> {
    db.client()
        .await
        .query(
            "SELECT content_hash, size_bytes FROM ingest_files WHERE status = 'loaded'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until a session of the test database waits for a lock: a loader, behind a lock the
/// test holds. `context` (e.g. the ingestor's log) goes into the failure message if none does
/// within a minute.
pub async fn wait_until_a_session_waits_for_a_lock(
    client: &tokio_postgres::Client,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE NOT l.granted AND a.datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no session waited for the test's lock {}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
