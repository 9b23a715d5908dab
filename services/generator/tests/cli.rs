//! The generator binary as users run it: real files in a real directory, read back with the
//! event contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use event_contract::{EventReader, ExtraColumnPolicy, ValidationContext};
use stack_tests::{http_get, ChildGuard};

const GENERATOR: &str = env!("CARGO_BIN_EXE_generator");

fn generate(out: &Path, args: &[&str]) -> Output {
    let output = Command::new(GENERATOR)
        .arg("--out")
        .arg(out)
        .args(["--log-format", "json", "--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn published_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// How many files in `dir` are published under their final names (a hidden name is a file in
/// progress).
fn complete_files(dir: &Path) -> usize {
    published_files(dir)
        .iter()
        .filter(|f| !f.file_name().unwrap().to_str().unwrap().starts_with('.'))
        .count()
}

/// Per file: (valid event ids, rejection codes).
fn read_back(path: &Path) -> (Vec<uuid::Uuid>, Vec<&'static str>) {
    let file = std::fs::File::open(path).unwrap();
    let reader = EventReader::new(file, ValidationContext::now(), ExtraColumnPolicy::Fail).unwrap();
    let (mut ids, mut rejections) = (Vec::new(), Vec::new());
    for row in reader {
        match row.unwrap().outcome {
            Ok(event) => ids.push(*event.event_id.as_uuid()),
            Err(rejection) => rejections.push(rejection.reason.code()),
        }
    }
    (ids, rejections)
}

/// The fields of the JSON summary line the generator logs at exit.
fn summary(output: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "Generator finished")
        .expect("no summary line")
}

#[test]
fn ten_files_of_a_thousand_rows_parse_with_zero_rejections() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    // Act
    generate(
        dir.path(),
        &[
            "--files", "10", "--rows", "1000", "--seed", "7", "--rate", "1000000",
        ],
    );
    // Assert
    let files = published_files(dir.path());
    assert_eq!(files.len(), 10);
    let mut unique = HashSet::new();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("events_") && name.ends_with(".csv"),
            "{name}"
        );
        let (ids, rejections) = read_back(file);
        assert_eq!(ids.len(), 1000, "{name}");
        assert!(rejections.is_empty(), "{name}: {rejections:?}");
        unique.extend(ids);
    }
    assert_eq!(unique.len(), 10_000, "no duplicates were asked for");
}

#[test]
fn the_same_seed_and_start_time_give_byte_identical_files() {
    let args = [
        "--files",
        "3",
        "--rows",
        "500",
        "--seed",
        "99",
        "--rate",
        "1000000",
        "--start-time",
        "2026-01-01T00:00:00Z",
        "--invalid-ratio",
        "0.1",
        "--duplicate-ratio",
        "0.1",
        "--late-ratio",
        "0.1",
    ];
    let (first, second, other) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(first.path(), &args);
    generate(second.path(), &args);
    let mut other_args = args;
    other_args[5] = "100";
    generate(other.path(), &other_args);
    let contents = |dir: &Path| -> Vec<Vec<u8>> {
        published_files(dir)
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect()
    };
    assert_eq!(contents(first.path()), contents(second.path()));
    assert_ne!(
        contents(first.path()),
        contents(other.path()),
        "another seed, other events"
    );
}

#[test]
fn injected_faults_come_out_at_their_ratios_with_the_intended_reason_codes() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    // Act
    let output = generate(
        dir.path(),
        &[
            "--files",
            "20",
            "--rows",
            "1000",
            "--rate",
            "1000000",
            "--invalid-ratio",
            "0.05",
            "--duplicate-ratio",
            "0.02",
            "--late-ratio",
            "0.03",
        ],
    );
    // Assert: what the contract reads back matches the generator's own account, code by code.
    let summary = summary(&output);
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let (mut seen, mut repeats, mut valid_rows) = (HashSet::new(), 0u64, 0u64);
    for file in published_files(dir.path()) {
        let (ids, rejections) = read_back(&file);
        for code in rejections {
            *rejected.entry(code.to_owned()).or_default() += 1;
        }
        for id in ids {
            valid_rows += 1;
            repeats += u64::from(!seen.insert(id));
        }
    }
    let intended: BTreeMap<String, u64> =
        serde_json::from_str(summary["invalid_by_reason"].as_str().unwrap()).unwrap();
    assert_eq!(rejected, intended);
    assert_eq!(
        intended.len(),
        9,
        "every reason code is injected: {intended:?}"
    );
    let invalid: u64 = rejected.values().sum();
    assert!(
        (800..1_200).contains(&invalid),
        "about 5% of 20,000 rows: {invalid}"
    );
    assert_eq!(repeats, summary["duplicates"].as_u64().unwrap());
    assert!(
        (250..550).contains(&repeats),
        "about 2% of 20,000 rows: {repeats}"
    );
    assert_eq!(valid_rows - repeats, summary["valid"].as_u64().unwrap());
}

#[test]
fn sigterm_discards_the_file_in_progress_and_exits_zero() {
    // Arrange: 400 rows/s and 100-row files, so a file is in progress most of the time.
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(GENERATOR)
        .arg("--out")
        .arg(dir.path())
        .args(["--rate", "400", "--rows", "100", "--log-format", "json"])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    // Three files published (hidden names are files in progress): the fourth is in progress.
    eventually("three published files", || complete_files(dir.path()) >= 3);
    // Act
    let status = Command::new("kill")
        .args(["-TERM", &guard.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = guard
        .wait_with_timeout(Duration::from_secs(10))
        .expect("did not exit on SIGTERM");
    // Assert
    assert!(exit.success(), "{exit:?}");
    let files = published_files(dir.path());
    assert!(
        files.len() >= 3,
        "the three files published before SIGTERM are kept, got {}",
        files.len()
    );
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(!name.starts_with('.'), "temp file left behind: {name}");
        assert_eq!(read_back(&file).0.len(), 100, "{name} is complete");
    }
}

#[test]
fn a_bad_config_value_stops_startup_naming_the_key_and_the_value() {
    let dir = tempfile::tempdir().unwrap();
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str, &'a str);
    let cases: [Case; 3] = [
        (&[("GENERATOR_RATE", "-3")], &[], "rate", "-3"),
        (
            &[("GENERATOR_LATE_RATIO", "lots")],
            &[],
            "late_ratio",
            "lots",
        ),
        (&[], &["--duplicate-ratio", "2"], "duplicate_ratio", "2"),
    ];
    for (env, args, key, value) in cases {
        let output = Command::new(GENERATOR)
            .arg("--out")
            .arg(dir.path())
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.to_lowercase().contains(key) && stderr.contains(value),
            "{stderr}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing was written"
    );
}

#[test]
fn help_explains_every_knob() {
    let output = Command::new(GENERATOR).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--out",
        "--rate",
        "--rows",
        "--files",
        "--seed",
        "--start-time",
        "--invalid-ratio",
        "--duplicate-ratio",
        "--late-ratio",
        "--config",
        "--log-format",
        "--listen",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The JSON log lines of a running child, read on a thread of their own.
fn log_lines(guard: &mut ChildGuard) -> mpsc::Receiver<serde_json::Value> {
    let stdout = guard.child_mut().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str(&line) {
                if tx.send(value).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

/// Waits for the log line with `message`.
fn wait_for_line(lines: &mpsc::Receiver<serde_json::Value>, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no \"{message}\" line"));
        if line["message"] == message {
            return line;
        }
    }
}

/// Polls `done` every 20 ms for up to 10 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_and_livez_are_served_while_running_and_agree_with_the_files_on_disk() {
    // Arrange: 500 rows/s and 50-row files: a file every 100 ms, until SIGTERM.
    let dir = tempfile::tempdir().unwrap();
    let ready_dir = tempfile::tempdir().unwrap();
    let ready_file = ready_dir.path().join("ready.json");
    let child = Command::new(GENERATOR)
        .arg("--out")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--ready-file")
        .arg(&ready_file)
        .args(["--rate", "500", "--rows", "50", "--files", "0"])
        .args(["--invalid-ratio", "0.1", "--duplicate-ratio", "0.05"])
        .args(["--late-ratio", "0.1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    let listen = guard
        .wait_for_ready_file(&ready_file, Duration::from_secs(20))
        .unwrap_or_else(|why| panic!("the generator did not start: {why}"));
    let lines = log_lines(&mut guard);
    let starting = wait_for_line(&lines, "Generator starting");
    assert_eq!(
        starting["listen"].as_str(),
        Some(listen.to_string().as_str()),
        "the start line names the bound address, not the configured port 0: {starting}"
    );
    let port = listen.port();

    // Act: liveness, then a scrape once at least 3 files are counted.
    let (status, body) = http_get(port, "/livez");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({ "status": "alive" })
    );
    assert_eq!(http_get(port, "/healthz").0, 200);
    let mut exposition = String::new();
    eventually("3 files counted", || {
        let (status, body) = http_get(port, "/metrics");
        assert_eq!(status, 200, "{body}");
        exposition = body;
        samples(&exposition)["generator_files_total"] >= 3.0
    });
    // Hidden temp files are the file in progress, not published ones.
    let on_disk_after_scrape = complete_files(dir.path());

    // Assert: the exposition follows the naming conventions (the process collector's families
    // keep their standard `process_` names).
    for line in exposition.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            (name.starts_with("generator_") || name.starts_with("process_"))
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{line}"
        );
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
    }
    let metrics = samples(&exposition);
    assert!(
        metrics
            .keys()
            .any(|k| k.starts_with("generator_build_info{")),
        "{exposition}"
    );
    assert_eq!(metrics["generator_target_rate_events_per_second"], 500.0);
    // The process collector reports the generator's own process.
    assert!(
        metrics["process_resident_memory_bytes"] > 0.0,
        "{exposition}"
    );
    assert!(metrics["process_open_fds"] > 0.0, "{exposition}");
    // Counters only count published files, and count them whole.
    let files = metrics["generator_files_total"];
    assert!(
        files <= on_disk_after_scrape as f64,
        "{files} counted, {on_disk_after_scrape} on disk"
    );
    let kind = |k: &str| metrics[&format!("generator_events_total{{kind=\"{k}\"}}")];
    assert_eq!(
        kind("valid") + kind("duplicate") + kind("invalid"),
        files * 50.0
    );
    let by_reason: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("generator_invalid_rows_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(by_reason, kind("invalid"));
    assert!(metrics["generator_late_events_total"] <= kind("valid"));
    assert!(metrics["generator_bytes_total"] > 0.0);

    // Act: stop it.
    let status = Command::new("kill")
        .args(["-TERM", &guard.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = guard
        .wait_with_timeout(Duration::from_secs(10))
        .expect("did not exit on SIGTERM");

    // Assert: a clean exit whose summary accounts for exactly the files on disk.
    assert!(exit.success(), "{exit:?}");
    let summary = wait_for_line(&lines, "Generator finished");
    let on_disk = published_files(dir.path());
    assert_eq!(summary["files"].as_u64().unwrap(), on_disk.len() as u64);
    assert!(on_disk.len() >= on_disk_after_scrape);
    let rows: usize = on_disk
        .iter()
        .map(|f| {
            let (ids, rejections) = read_back(f);
            ids.len() + rejections.len()
        })
        .sum();
    assert_eq!(summary["rows"].as_u64().unwrap(), rows as u64);
    assert_eq!(http_get(port, "/livez").0, 0, "the server stopped too");
}

#[test]
fn a_listen_port_in_use_stops_startup_with_a_clear_error() {
    // Arrange
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    // Act
    let output = Command::new(GENERATOR)
        .arg("--out")
        .arg(dir.path())
        .args(["--listen", &addr, "--files", "1", "--rate", "1000000"])
        .output()
        .unwrap();
    // Assert
    let logs = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{logs}");
    assert!(
        logs.contains(&format!("cannot listen on {addr}")),
        "the error names the address: {logs}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "nothing was written"
    );
}

#[test]
fn the_http_server_stops_with_the_write_loop_when_the_last_file_is_written() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(GENERATOR)
        .arg("--out")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--files", "2", "--rows", "10", "--rate", "1000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    let lines = log_lines(&mut guard);
    // Act
    let exit = guard
        .wait_with_timeout(Duration::from_secs(10))
        .expect("the server kept the process alive");
    // Assert
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        wait_for_line(&lines, "Generator finished")["files"].as_u64(),
        Some(2)
    );
}
