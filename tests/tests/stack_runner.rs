#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `scripts/stack`, the native stack runner, end to end: it brings the compose topology up from
//! the binaries against a fresh database, events reach PostgreSQL within seconds, a second `up`
//! starts nothing, `down` leaves no process behind, two ingestors behind it load a finite feed
//! exactly once, `down` never signals a process it did not start, a failing `up` says why and
//! leaves nothing running, and a half-dead stack is reported and restarted only after `down`.
//!
//! It needs python3 and the debug `generator` and `ingestor` binaries (see [`bin_dir`]).
//!
//! The runner starts its processes in sessions of their own, so they outlive the `scripts/stack`
//! invocation that started them. [`Stack`] therefore runs `scripts/stack down` when it is
//! dropped, and then SIGKILLs anything still running from its run directory, so a failing test
//! leaves nothing behind either.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stack_tests::{
    http_get, orphan_events, wait_for_finished_files, workspace_root, ChildGuard, TestDatabase,
};

/// How long the runner may wait for each step of `up` (debug binaries on a busy CI machine).
const WAIT_READY_SECONDS: &str = "60";

/// The runner under test.
fn runner() -> PathBuf {
    workspace_root().join("scripts/stack")
}

/// The directory holding this build's `generator` and `ingestor` binaries.
///
/// Integration tests run from `target/<profile>/deps`, so the binaries sit one level up (this
/// also follows `CARGO_TARGET_DIR`). `cargo test --workspace` builds them because their
/// packages have integration tests; `cargo test -p stack-tests` alone does not.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for name in ["generator", "ingestor"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing: build the services first with `cargo build -p generator -p ingestor` \
             (scripts/test builds them through cargo test --workspace)",
            dir.join(name).display()
        );
    }
    dir
}

/// Whether `prometheus` is on `PATH` (the runner then starts it; `.ci/run` installs it).
fn prometheus_installed() -> bool {
    Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `(state letter, argv)` of a PID from `/proc`, or `None` if there is no such process.
fn proc_entry(pid: u32) -> Option<(char, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // The command name may contain spaces and parentheses; the state follows the last ')'.
    let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
    let argv = cmdline
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    Some((state, argv))
}

/// Whether `pid` is a live (not zombie) process whose command line mentions `needle`.
///
/// Processes the runner started outlive it and are reparented; until their new parent reaps
/// them they linger as zombies, which have exited all the same.
fn runs_with(pid: u32, needle: &str) -> bool {
    proc_entry(pid).is_some_and(|(state, argv)| {
        !matches!(state, 'Z' | 'X') && argv.iter().any(|a| a.contains(needle))
    })
}

/// Sends SIGKILL to a PID (used only as the last-resort cleanup).
fn kill_hard(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// One run directory of `scripts/stack`; runs `down` (and kills any survivor) when dropped.
struct Stack {
    /// The run directory: state, pids, logs and the shared input directory.
    run_dir: tempfile::TempDir,
    /// The admin URL passed as `STACK_ADMIN_URL`, if the test has a database.
    database_url: Option<String>,
}

impl Stack {
    fn new(database: Option<&TestDatabase>) -> Stack {
        Stack::with_url(database.map(|db| db.url.clone()))
    }

    fn with_url(database_url: Option<String>) -> Stack {
        Stack {
            run_dir: tempfile::tempdir().unwrap(),
            database_url,
        }
    }

    fn path(&self) -> &Path {
        self.run_dir.path()
    }

    fn path_str(&self) -> String {
        self.path().display().to_string()
    }

    /// Runs `scripts/stack <command> --run-dir RUN <args>` to completion.
    fn run(&self, command: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(runner());
        cmd.arg(command)
            .arg("--run-dir")
            .arg(self.path())
            .args(args);
        if let Some(url) = &self.database_url {
            cmd.env("STACK_ADMIN_URL", url);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {} (needs python3): {e}", runner().display()))
    }

    /// `up` with the debug binaries; panics with the runner's output unless it succeeds.
    fn up(&self, args: &[&str]) -> String {
        let bin_dir = bin_dir();
        let mut all = vec![
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--wait-ready",
            WAIT_READY_SECONDS,
        ];
        all.extend_from_slice(args);
        let output = self.run("up", &all);
        assert!(
            output.status.success(),
            "scripts/stack up failed ({}):\n{}",
            output.status,
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The recorded PIDs, from `RUN/pids/<name>.pid`.
    fn pids(&self) -> BTreeMap<String, u32> {
        let Ok(entries) = std::fs::read_dir(self.path().join("pids")) else {
            return BTreeMap::new();
        };
        entries
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "pid"))
            .map(|path| {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                let pid = std::fs::read_to_string(&path)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                (name, pid)
            })
            .collect()
    }

    /// Every live process whose command line mentions this run directory (each process the
    /// runner starts is given paths inside it), except `scripts/stack` itself.
    fn processes_using_run_dir(&self) -> Vec<u32> {
        let needle = self.path_str();
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid| runs_with(*pid, &needle))
            .filter(|pid| {
                proc_entry(*pid)
                    .is_some_and(|(_, argv)| !argv.iter().any(|a| a.ends_with("scripts/stack")))
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    /// `status --json`: its output and the parsed document.
    fn status_json(&self) -> (Output, Value) {
        let output = self.run("status", &["--json"]);
        let json = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", describe(&output)));
        (output, json)
    }

    /// The entry of process `name` in a `status --json` document.
    fn process<'a>(status: &'a Value, name: &str) -> &'a Value {
        status["processes"]
            .as_array()
            .and_then(|processes| processes.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no process {name} in {status:#}"))
    }

    /// The log file of one process.
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    /// `scripts/stack down`, then SIGKILL for anything still running from the run directory
    /// (should `down` itself be broken), so no test leaves processes behind.
    fn drop(&mut self) {
        if self.path().join("state.json").exists() {
            let output = self.run("down", &["--timeout", "10"]);
            if !output.status.success() {
                eprintln!("scripts/stack down failed:\n{}", describe(&output));
            }
        }
        for pid in self.processes_using_run_dir() {
            eprintln!("killing leftover process {pid} of {}", self.path_str());
            kill_hard(pid);
        }
    }
}

/// A command's exit status, stdout and stderr, for assertion messages.
fn describe(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `select count(*) from <table>`.
async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Polls `events` until it holds more than `above` rows; returns the count.
async fn wait_for_events_above(
    client: &tokio_postgres::Client,
    above: i64,
    timeout: Duration,
    stack: &Stack,
) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let events = count(client, "events").await;
        if events > above {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "events did not grow above {above} within {timeout:?}; ingestor log:\n{}\ngenerator log:\n{}",
            stack.log("ingestor-1"),
            stack.log("generator")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The integer field `key` of a JSON log line (`"key":123`).
fn json_field(line: &str, key: &str) -> u64 {
    let marker = format!("\"{key}\":");
    let start = line
        .find(&marker)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + marker.len();
    line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
}

#[tokio::test]
async fn the_runner_brings_the_stack_up_events_flow_and_down_leaves_no_process_behind() {
    // Arrange
    let db = TestDatabase::create().await;
    let stack = Stack::new(Some(&db));
    let client = db.client().await;
    let with_prometheus = prometheus_installed();

    // Act: up
    let started = Instant::now();
    stack.up(&[
        "--ingestors",
        "1",
        "--rate",
        "2000",
        "--rows-per-file",
        "200",
    ]);
    eprintln!("scripts/stack up took {:?}", started.elapsed());

    // Assert: every process is recorded and runs
    let pids = stack.pids();
    let mut expected: Vec<&str> = vec!["generator", "ingestor-1"];
    if with_prometheus {
        expected.push("prometheus");
    }
    assert_eq!(
        pids.keys().map(String::as_str).collect::<Vec<_>>(),
        expected
    );
    for (name, pid) in &pids {
        assert!(
            runs_with(*pid, &stack.path_str()),
            "{name} (pid {pid}) is not running"
        );
    }

    // Assert: events reach PostgreSQL within seconds, and keep coming
    let first = wait_for_events_above(&client, 0, Duration::from_secs(30), &stack).await;
    eprintln!("first {first} events after {:?}", started.elapsed());
    wait_for_events_above(&client, first, Duration::from_secs(30), &stack).await;

    // Assert: status reports every process alive and ready, in both formats
    let (output, status) = stack.status_json();
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(status["ok"], true, "{status:#}");
    assert_eq!(
        status["processes"].as_array().unwrap().len(),
        pids.len(),
        "{status:#}"
    );
    for (name, pid) in &pids {
        let process = Stack::process(&status, name);
        assert_eq!(process["pid"], *pid, "{status:#}");
        assert_eq!(process["alive"], true, "{status:#}");
        assert_eq!(process["ready"], 200, "{status:#}");
        let port = process["port"].as_u64().unwrap();
        assert_eq!(
            process["url"],
            format!("http://127.0.0.1:{port}"),
            "{status:#}"
        );
    }
    assert!(status["database"]["events"].as_i64().unwrap() >= first);
    assert!(status["database"]["files"].as_i64().unwrap() >= 1);
    assert!(status["database"]["rejected_rows"].is_i64(), "{status:#}");
    assert!(status["waiting_files"].is_u64(), "{status:#}");
    let plain = stack.run("status", &[]);
    assert!(plain.status.success(), "{}", describe(&plain));
    let plain = String::from_utf8_lossy(&plain.stdout);
    for name in pids.keys() {
        assert!(
            plain
                .lines()
                .any(|l| l.trim_start().starts_with(name.as_str()) && l.contains(" running ")),
            "{plain}"
        );
    }
    assert!(plain.contains("events="), "{plain}");

    // Assert: Prometheus runs with the derived config and scrapes both services
    if with_prometheus {
        let port = u16::try_from(
            Stack::process(&status, "prometheus")["port"]
                .as_u64()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(http_get(port, "/-/ready").0, 200);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = http_get(port, "/api/v1/targets?state=active");
            let targets: Vec<(String, String)> = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|json| json["data"]["activeTargets"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    (
                        t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                        t["health"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let mut up: Vec<&str> = targets
                .iter()
                .filter(|(_, health)| health == "up")
                .map(|(job, _)| job.as_str())
                .collect();
            up.sort_unstable();
            if up == ["generator", "ingestor"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus does not scrape the generator and the ingestor: {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // ... and has loaded every shipped alert (rule_files made absolute by the runner).
        let shipped =
            std::fs::read_to_string(workspace_root().join("grafana/prometheus/alerts.yml"))
                .unwrap()
                .matches("- alert: ")
                .count();
        let (_, body) = http_get(port, "/api/v1/rules?type=alert");
        let loaded = serde_json::from_str::<Value>(&body).unwrap()["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| g["rules"].as_array().map_or(0, Vec::len))
            .sum::<usize>();
        assert_eq!(
            loaded, shipped,
            "the native Prometheus did not load alerts.yml: {body}"
        );
    } else {
        eprintln!("prometheus is not on PATH: the runner started without it, so it is not checked");
    }

    // Act: up again
    let again = stack.up(&["--ingestors", "3"]);

    // Assert: nothing new started, the same processes still run
    assert!(again.contains("already running"), "{again}");
    assert_eq!(stack.pids(), pids, "a second up changed the recorded PIDs");
    let mut recorded: Vec<u32> = pids.values().copied().collect();
    recorded.sort_unstable();
    assert_eq!(
        stack.processes_using_run_dir(),
        recorded,
        "processes other than the recorded ones use the run directory"
    );

    // Act: down
    let output = stack.run("down", &[]);

    // Assert: exit 0, every recorded process gone, pid files removed
    assert!(output.status.success(), "{}", describe(&output));
    for (name, pid) in &pids {
        assert!(
            !runs_with(*pid, &stack.path_str()),
            "{name} (pid {pid}) still runs after down"
        );
    }
    assert_eq!(stack.processes_using_run_dir(), Vec::<u32>::new());
    assert!(
        stack.pids().is_empty(),
        "pid files left: {:?}",
        stack.pids()
    );
    assert!(stack.log("ingestor-1").contains("Ingestor stopped"));

    // Act + Assert: down again is harmless, and status says nothing is recorded
    let output = stack.run("down", &[]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stack.run("status", &[]).status.code(), Some(2));
}

#[tokio::test]
async fn two_ingestors_behind_the_runner_load_a_finite_feed_exactly_once() {
    // Arrange
    let db = TestDatabase::create().await;
    let stack = Stack::new(Some(&db));
    let client = db.client().await;

    // Act: 20 files of 500 rows with duplicates and invalid rows, two ingestors
    stack.up(&[
        "--ingestors",
        "2",
        "--files",
        "20",
        "--rows-per-file",
        "500",
        "--duplicate-ratio",
        "0.01",
        "--invalid-ratio",
        "0.005",
        "--late-ratio",
        "0.02",
        "--rate",
        "10000",
        "--seed",
        "11",
        "--no-prometheus",
    ]);
    let input = stack.path().join("data/incoming");
    wait_for_finished_files(&client, &input, 20, Duration::from_secs(60), || {
        format!(
            "; logs:\n{}\n{}",
            stack.log("ingestor-1"),
            stack.log("ingestor-2")
        )
    })
    .await;
    // The generator's own count of what it wrote is the independent expectation.
    let deadline = Instant::now() + Duration::from_secs(30);
    let summary = loop {
        if let Some(line) = stack
            .log("generator")
            .lines()
            .find(|l| l.contains("\"message\":\"Generator finished\""))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no summary line: {}",
            stack.log("generator")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (rows, valid, duplicates, invalid) = (
        json_field(&summary, "rows"),
        json_field(&summary, "valid"),
        json_field(&summary, "duplicates"),
        json_field(&summary, "invalid"),
    );

    // Assert: the ledger accounts for every line, once
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'loaded'), sum(lines)::bigint, \
             sum(accepted)::bigint, sum(duplicates)::bigint, sum(rejected)::bigint, \
             count(*) FILTER (WHERE lines <> accepted + duplicates + rejected) \
             FROM ingest_files",
            &[],
        )
        .await
        .unwrap();
    let ledger: (i64, i64, i64, i64, i64, i64) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert_eq!(rows, 20 * 500, "{summary}");
    assert_eq!(ledger.0, 20, "every file loaded exactly once");
    assert_eq!(ledger.1 as u64, rows, "every line accounted for");
    assert_eq!(ledger.5, 0, "a ledger entry whose lines do not add up");
    assert_eq!(
        (ledger.2 as u64, ledger.3 as u64, ledger.4 as u64),
        (valid, duplicates, invalid),
        "ledger (accepted, duplicates, rejected) against the generator's (valid, duplicates, \
         invalid): {summary}"
    );

    // Assert: the tables hold exactly what the ledger says, each event once
    let events = count(&client, "events").await;
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT event_id) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let orphans = orphan_events(&client).await;
    assert_eq!(events, ledger.2, "events = sum(accepted)");
    assert_eq!(distinct, events, "an event_id stored twice");
    assert_eq!(orphans, 0, "events without a loaded ledger entry");
    assert_eq!(count(&client, "rejected_rows").await, ledger.4);

    // Assert: a generator that finished its files is not a failure, and status agrees
    let (output, status) = stack.status_json();
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(Stack::process(&status, "generator")["state"], "finished");
    for name in ["ingestor-1", "ingestor-2"] {
        assert_eq!(Stack::process(&status, name)["alive"], true, "{status:#}");
    }
    assert_eq!(status["database"]["events"], events, "{status:#}");
    assert_eq!(status["database"]["files"], 20, "{status:#}");
    assert_eq!(status["waiting_files"], 0, "{status:#}");

    // Act + Assert: down stops both ingestors
    let pids = stack.pids();
    let output = stack.run("down", &[]);
    assert!(output.status.success(), "{}", describe(&output));
    for (name, pid) in &pids {
        assert!(
            !runs_with(*pid, &stack.path_str()),
            "{name} (pid {pid}) still runs"
        );
    }
}

#[test]
fn down_never_signals_a_process_it_did_not_start() {
    // Arrange: a live process the runner did not start, under recorded names
    let stack = Stack::new(None);
    let mut stranger = ChildGuard::new(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = stranger.pid();
    let pids = stack.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    for name in ["ingestor-1", "generator", "stranger"] {
        std::fs::write(pids.join(format!("{name}.pid")), format!("{pid}\n")).unwrap();
    }
    // ingestor-1: the PID now runs a different command. generator: the same command line as
    // recorded, but a different start time, as when a PID is reused by the same program.
    // stranger: a pid file with no recorded command at all.
    let log = stack.path().join("logs/none.log");
    let state = format!(
        r#"{{"version": 1, "processes": [
  {{"name": "ingestor-1", "role": "ingestor", "pid": {pid}, "argv": ["/nonexistent/ingestor", "run"], "log": "{log}"}},
  {{"name": "generator", "role": "generator", "pid": {pid}, "argv": ["sleep", "60"], "start_ticks": 1, "log": "{log}"}}
]}}"#,
        log = log.display()
    );
    std::fs::write(stack.path().join("state.json"), state).unwrap();

    // Act
    let output = stack.run("down", &["--timeout", "5"]);

    // Assert: the stranger lives on, and down says why it left it alone
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        stranger.child_mut().try_wait().unwrap().is_none(),
        "down killed a process it did not start: {}",
        describe(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.matches("not signalled").count(),
        2,
        "{}",
        describe(&output)
    );
    assert!(stdout.contains("left alone"), "{}", describe(&output));
    assert!(
        pids.join("stranger.pid").exists(),
        "an unknown pid file was removed"
    );
}

#[tokio::test]
async fn a_failing_up_names_the_problem_and_leaves_nothing_running() {
    // Missing binaries: the message says how to build them, and nothing is recorded.
    let stack = Stack::with_url(None);
    let empty = tempfile::tempdir().unwrap();
    let output = stack.run(
        "up",
        &[
            "--bin-dir",
            empty.path().to_str().unwrap(),
            "--no-prometheus",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr.contains("cargo build --release --locked -p generator -p ingestor"),
        "{}",
        describe(&output)
    );
    assert!(!stack.path().join("state.json").exists());

    // No PostgreSQL at STACK_ADMIN_URL: the message names the server and what to do.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stack = Stack::with_url(Some(format!(
        "postgres://postgres@127.0.0.1:{closed_port}/events"
    )));
    let bin_dir = bin_dir();
    let output = stack.run(
        "up",
        &[
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--wait-ready",
            "1",
            "--no-prometheus",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr.contains(&format!(
            "not reachable at postgres://postgres@127.0.0.1:{closed_port}/events"
        )),
        "{}",
        describe(&output)
    );
    assert!(!stack.path().join("state.json").exists());

    // An ingestor that cannot start: up fails with its log tail and stops what it started.
    let db = TestDatabase::create().await;
    let stack = Stack::new(Some(&db));
    let output = stack.run(
        "up",
        &[
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--ingestors",
            "2",
            "--no-prometheus",
            "--ingestor-env",
            "INGESTOR_NO_SUCH_SETTING=1",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr.contains("no_such_setting") && stderr.contains("last lines of"),
        "{}",
        describe(&output)
    );
    assert_eq!(stack.processes_using_run_dir(), Vec::<u32>::new());
    assert!(
        stack.pids().is_empty(),
        "pid files left: {:?}",
        stack.pids()
    );
    assert!(!stack.path().join("state.json").exists());
}

#[tokio::test]
async fn a_stack_with_a_dead_process_is_reported_and_up_refuses_until_down() {
    // Arrange: two ingestors, one of which dies
    let db = TestDatabase::create().await;
    let stack = Stack::new(Some(&db));
    stack.up(&["--ingestors", "2", "--no-generator", "--no-prometheus"]);
    let pids = stack.pids();
    let (survivor, victim) = (pids["ingestor-1"], pids["ingestor-2"]);
    kill_hard(victim);
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs_with(victim, &stack.path_str()) {
        assert!(Instant::now() < deadline, "SIGKILL did not end {victim}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Act + Assert: status reports the dead one and fails
    let (output, status) = stack.status_json();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert_eq!(Stack::process(&status, "ingestor-1")["alive"], true);
    assert_eq!(Stack::process(&status, "ingestor-2")["alive"], false);
    assert_eq!(Stack::process(&status, "ingestor-2")["state"], "dead");

    // Act + Assert: up refuses to patch a half-dead stack, and leaves the survivor alone
    let bin_dir = bin_dir();
    let output = stack.run("up", &["--bin-dir", bin_dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("scripts/stack down"),
        "{}",
        describe(&output)
    );
    assert!(runs_with(survivor, &stack.path_str()));
    assert_eq!(stack.pids(), pids);

    // Act + Assert: down stops the survivor; then up starts a fresh stack
    let output = stack.run("down", &[]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(!runs_with(survivor, &stack.path_str()));
    stack.up(&["--ingestors", "1", "--no-generator", "--no-prometheus"]);
    let fresh = stack.pids();
    assert_eq!(fresh.keys().collect::<Vec<_>>(), ["ingestor-1"]);
    assert!(runs_with(fresh["ingestor-1"], &stack.path_str()));
    let (output, status) = stack.status_json();
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(Stack::process(&status, "ingestor-1")["ready"], 200);
}
