//! The generator binary as users run it: real files in a real directory, read back with the
//! event contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use event_contract::{EventReader, ExtraColumnPolicy, ValidationContext};
use stack_tests::ChildGuard;

const GENERATOR: &str = env!("CARGO_BIN_EXE_generator");

fn generate(out: &Path, args: &[&str]) -> Output {
    let output = Command::new(GENERATOR)
        .arg("--out")
        .arg(out)
        .args(["--log-format", "json"])
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
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    std::thread::sleep(Duration::from_millis(1_300));
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
        "about 5 files in 1.3 s, got {}",
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
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
