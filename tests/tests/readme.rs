#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The README's shell blocks, run in order as a newcomer pastes them, so they cannot rot.
//!
//! Every ```` ```sh ```` block of `README.md` carries a marker, an HTML comment on the line
//! before its fence (invisible on GitHub), and a block without one fails the test, so nothing
//! new goes unchecked:
//!
//! - `<!-- readme-test: run -->`: runs with `bash -euo pipefail` and must exit 0.
//! - `<!-- readme-test: background (why) -->`: a long-running command (the ingestor). It runs in
//!   a process group of its own; the test waits until the ledger has finished every file waiting
//!   in `$EVENTS_DIR`, checks the database against the files (every valid unique event stored
//!   once, the ledger's sums equal to the files' lines), then sends SIGINT to the group (what
//!   Ctrl-C does) and expects a clean exit.
//! - `<!-- readme-test: output (why) -->`, on the (non-shell) block after a `run` block: each of
//!   its lines must be a line of that run block's standard output ("success looks like this").
//! - `<!-- readme-test: skip (why) -->`: not run (installs, Docker, system changes), with the
//!   reason in the marker.
//!
//! The blocks share one shell session, as they would in a terminal: each `run` block starts by
//! sourcing the variables the previous ones exported (`export -p`), so a README block that sets
//! a variable for later ones must `export` it. They run from the repository root.
//!
//! What is substituted, and how honestly: the README defines its settings as `export NAME=value`
//! lines (`PGHOST`, `PGPORT`, `PGUSER`, `EVENTS_DB`, `EVENTS_DIR`, `BIN`). The test replaces
//! exactly those values, each exactly once, with the test server's host, port and user, a fresh
//! database name on it (dropped when the test ends, whatever happens), a directory in a
//! temporary folder, and this build's target directory (`<target>/release`, where the README's
//! own `cargo build --release` puts the binaries, also with `CARGO_TARGET_DIR`). Nothing else of
//! a block changes. The environment the blocks see is the test's, without the connection and
//! service variables a developer's shell may hold (`PG*`, `DATABASE_URL`, `INGESTOR_*`,
//! `GENERATOR_*`, ...), plus `PGPASSWORD` when the test server's URL has a password, and
//! `INGESTOR_LISTEN` / `GENERATOR_LISTEN` set to port 0, so the README's default ports 9100 and
//! 9101 being in use on the machine cannot fail the run.
//!
//! The README's build (`cargo build --release --locked -p generator -p ingestor`) is a no-op when
//! the release binaries are current (CI builds them before `scripts/test`); from a clean target
//! directory it takes about 2 minutes on 2 cores. The rest runs in about 20 seconds.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use event_contract::{EventReader, ExtraColumnPolicy, ValidationContext};
use stack_tests::{
    database_url, orphan_events, wait_for_finished_files, workspace_root, ChildGuard,
};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};
use uuid::Uuid;

/// The file under test, relative to the workspace root.
const README: &str = "README.md";
/// How a marker comment starts.
const MARKER_PREFIX: &str = "<!-- readme-test:";
/// Fence languages that are shell blocks and therefore need a marker.
const SHELL_LANGUAGES: [&str; 4] = ["sh", "bash", "shell", "console"];
/// The settings the README defines with `export NAME=value` and the test substitutes.
const SETTINGS: [&str; 6] = [
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "EVENTS_DB",
    "EVENTS_DIR",
    "BIN",
];
/// How long the background block may take to finish every waiting file (a deadline for a hung
/// run, not a timing assertion).
const LOAD_DEADLINE: Duration = Duration::from_secs(120);
/// How long the background block may take to exit after Ctrl-C.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// What a marker asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    /// Run the block; it must exit 0.
    Run,
    /// Run the block in the background until every file is loaded, then Ctrl-C it.
    Background,
    /// Lines that must appear in the previous run block's output.
    Output,
    /// Do not run the block, for the reason given.
    Skip(String),
}

/// One fenced block of the README.
#[derive(Debug, Clone)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    /// The fence's language (`sh`, `text`, ...), empty when none.
    language: String,
    /// The marker on the line before the fence, if any.
    marker: Option<Marker>,
    /// The block's lines, without the fences.
    body: String,
}

/// One thing the test does, in README order.
#[derive(Debug)]
enum Step {
    /// A `run` block, and the lines its output must contain (from an `output` block after it).
    Run { block: Block, expected: Vec<String> },
    /// A `background` block.
    Background { block: Block },
}

/// Every fenced block of `markdown`, with its marker.
///
/// # Errors
/// A marker that is not one of the four kinds, a `skip` without a reason, or a fence left open.
fn blocks(markdown: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut previous_text_line: Option<&str> = None;
    let mut lines = markdown.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let Some(language) = line.trim_start().strip_prefix("```") else {
            if !line.trim().is_empty() {
                previous_text_line = Some(line.trim());
            }
            continue;
        };
        let marker = match previous_text_line {
            Some(text) if text.starts_with(MARKER_PREFIX) => {
                Some(parse_marker(text).map_err(|e| format!("README.md line {}: {e}", index + 1))?)
            }
            _ => None,
        };
        let mut body = String::new();
        let mut closed = false;
        for (_, inner) in lines.by_ref() {
            if inner.trim_start().starts_with("```") {
                closed = true;
                break;
            }
            body.push_str(inner);
            body.push('\n');
        }
        if !closed {
            return Err(format!("README.md line {}: fence never closed", index + 1));
        }
        blocks.push(Block {
            line: index + 1,
            language: language.trim().to_owned(),
            marker,
            body,
        });
        previous_text_line = None;
    }
    Ok(blocks)
}

/// The marker in a `<!-- readme-test: kind (reason) -->` comment.
fn parse_marker(text: &str) -> Result<Marker, String> {
    let inner = text
        .strip_prefix(MARKER_PREFIX)
        .and_then(|rest| rest.strip_suffix("-->"))
        .ok_or_else(|| format!("a marker must be one line, `{MARKER_PREFIX} kind -->`: {text}"))?
        .trim();
    let (kind, reason) = inner.split_once(' ').unwrap_or((inner, ""));
    match kind {
        "run" => Ok(Marker::Run),
        "background" => Ok(Marker::Background),
        "output" => Ok(Marker::Output),
        "skip" if !reason.trim().is_empty() => Ok(Marker::Skip(reason.trim().to_owned())),
        "skip" => Err("a skip marker needs a reason: `skip (why)`".to_owned()),
        other => Err(format!(
            "unknown marker kind {other:?} (run, background, output or skip)"
        )),
    }
}

/// The steps the README asks for, in order.
///
/// # Errors
/// Every shell block without a marker (by line), a marker on a block it does not fit (`output`
/// not after a `run` block, `run` or `background` on a non-shell block), or no step at all.
fn plan(markdown: &str) -> Result<Vec<Step>, String> {
    let mut steps: Vec<Step> = Vec::new();
    let mut problems = Vec::new();
    let mut previous_was_run = false;
    for block in blocks(markdown)? {
        let shell = SHELL_LANGUAGES.contains(&block.language.as_str());
        let is_run = matches!(block.marker, Some(Marker::Run));
        match (&block.marker, shell) {
            (None, true) => problems.push(format!(
                "README.md line {}: a ```{} block without a marker; put `<!-- readme-test: run -->` \
                 (or background / skip (why)) on the line before it",
                block.line, block.language
            )),
            (None, false) | (Some(Marker::Skip(_)), _) => {}
            (Some(Marker::Run), true) => steps.push(Step::Run {
                block,
                expected: Vec::new(),
            }),
            (Some(Marker::Background), true) => steps.push(Step::Background { block }),
            (Some(Marker::Output), false) => match steps.last_mut() {
                Some(Step::Run { expected, .. }) if previous_was_run => expected.extend(
                    block
                        .body
                        .lines()
                        .map(|l| l.trim_end().to_owned())
                        .filter(|l| !l.is_empty()),
                ),
                _ => problems.push(format!(
                    "README.md line {}: an output marker must follow a run block",
                    block.line
                )),
            },
            (Some(marker), _) => problems.push(format!(
                "README.md line {}: a {marker:?} marker does not fit a ```{} block",
                block.line, block.language
            )),
        }
        previous_was_run = is_run;
    }
    if steps.is_empty() {
        problems.push("README.md has no run block".to_owned());
    }
    if problems.is_empty() {
        Ok(steps)
    } else {
        Err(problems.join("\n"))
    }
}

/// `text` in single quotes for bash.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// `body` with the values of `export NAME=value` assignments of the names in `values` replaced,
/// counting each replacement in `counts`. Comments after `#` and other lines stay as they are.
fn substitute(
    body: &str,
    values: &BTreeMap<&str, String>,
    counts: &mut BTreeMap<String, usize>,
) -> String {
    let mut out = String::new();
    for line in body.lines() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix("export ") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        // The comment starts at the first `#` that follows whitespace.
        let comment_at = rest
            .char_indices()
            .find(|&(i, c)| c == '#' && rest[..i].ends_with(char::is_whitespace))
            .map_or(rest.len(), |(i, _)| i);
        let (code, comment) = rest.split_at(comment_at);
        let words: Vec<String> = code
            .split_whitespace()
            .map(|word| match word.split_once('=') {
                Some((name, _)) if values.contains_key(name) => {
                    *counts.entry(name.to_owned()).or_default() += 1;
                    format!("{name}={}", shell_quote(&values[name]))
                }
                _ => word.to_owned(),
            })
            .collect();
        out.push_str(&line[..line.len() - trimmed.len()]);
        out.push_str("export ");
        out.push_str(&words.join(" "));
        if !comment.is_empty() {
            out.push_str("   ");
            out.push_str(comment);
        }
        out.push('\n');
    }
    out
}

/// The build's target directory: this test runs from `<target>/<profile>/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// A database name nobody has, which the README creates and this guard drops again.
struct ScratchDatabase {
    /// The database's name.
    name: String,
    /// The maintenance connection it is dropped through.
    maintenance_url: String,
}

impl Drop for ScratchDatabase {
    /// Drops the database if it still exists (the README's last block may have dropped it).
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        match Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.maintenance_url,
                "-c",
                &sql,
            ])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cannot drop scratch database {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cannot drop scratch database {}: {e}", self.name),
        }
    }
}

/// A background block's bash, leader of its own process group; SIGKILLs the group when dropped
/// while the leader still runs (its children, such as the ingestor, included).
struct ProcessGroup {
    /// The group's leader, killed and reaped by its own guard afterwards.
    leader: ChildGuard,
}

impl ProcessGroup {
    /// Sends `signal` (e.g. `INT`) to every process of the group.
    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([
                format!("-{signal}"),
                "--".to_owned(),
                format!("-{}", self.leader.pid()),
            ])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // The PGID is the leader's PID, which cannot be reused while the leader is unreaped.
        if matches!(self.leader.child_mut().try_wait(), Ok(None)) {
            self.signal("KILL");
        }
    }
}

/// The shell session the blocks share: the environment they start from, and the file where each
/// block leaves its exported variables for the next.
struct Session {
    /// Scratch folder: the variables file and the background block's log.
    dir: tempfile::TempDir,
    /// Environment changes for every block (`None` removes the variable).
    env: Vec<(String, Option<String>)>,
}

impl Session {
    fn env_file(&self) -> PathBuf {
        self.dir.path().join("session.env")
    }

    /// The script for `body`: previous variables first, then the block.
    fn script(&self, body: &str, save: bool) -> String {
        let env_file = shell_quote(&self.env_file().display().to_string());
        let mut script = format!("if [ -f {env_file} ]; then source {env_file}; fi\n{body}\n");
        if save {
            script.push_str(&format!("export -p > {env_file}\n"));
        }
        script
    }

    fn command(&self, body: &str, save: bool) -> Command {
        let mut command = Command::new("bash");
        command
            .args(["-euo", "pipefail", "-c", &self.script(body, save)])
            .current_dir(workspace_root())
            .stdin(Stdio::null());
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command
    }
}

/// Both output streams, for failure messages.
fn describe(output: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The event files directly in `dir`, sorted.
fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    files
}

/// The database holds exactly the valid unique events of the archived files, every file is
/// loaded once, and the ledger's sums equal the files' lines, read independently with the
/// contract.
async fn assert_loaded_exactly(client: &Client, events_dir: &Path) {
    let archived = csv_files(&events_dir.join("processed"));
    assert!(!archived.is_empty(), "no file was archived to processed/");
    assert_eq!(csv_files(&events_dir.join("failed")), Vec::<PathBuf>::new());
    let (mut lines, mut valid, mut rejected) = (0_i64, 0_i64, 0_i64);
    let mut unique = HashSet::new();
    for path in &archived {
        let reader = EventReader::new(
            File::open(path).unwrap(),
            ValidationContext::now(),
            ExtraColumnPolicy::Ignore,
        )
        .unwrap();
        for row in reader {
            lines += 1;
            match row.unwrap().outcome {
                Ok(event) => {
                    valid += 1;
                    unique.insert(*event.event_id.as_uuid());
                }
                Err(_) => rejected += 1,
            }
        }
    }
    let stored: HashSet<Uuid> = client
        .query("SELECT event_id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        (
            unique.difference(&stored).count(),
            stored.difference(&unique).count()
        ),
        (0, 0),
        "events (missing, extra) against the archived files' valid unique events"
    );
    let ledger = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'loaded'), count(*) FILTER (WHERE status <> 'loaded'), \
             coalesce(sum(lines), 0)::bigint, coalesce(sum(accepted), 0)::bigint, \
             coalesce(sum(duplicates), 0)::bigint, coalesce(sum(rejected), 0)::bigint \
             FROM ingest_files",
            &[],
        )
        .await
        .unwrap();
    let unique = i64::try_from(unique.len()).unwrap();
    let files = i64::try_from(archived.len()).unwrap();
    let got: [i64; 6] = std::array::from_fn(|i| ledger.get(i));
    assert_eq!(
        got,
        [files, 0, lines, unique, valid - unique, rejected],
        "ledger (loaded files, other files, lines, accepted, duplicates, rejected)"
    );
    assert_eq!(
        orphan_events(client).await,
        0,
        "events without a loaded ledger entry"
    );
}

#[test]
fn every_shell_block_needs_a_marker_and_markers_must_fit() {
    let unmarked =
        "# T\n\n<!-- readme-test: run -->\n```sh\ntrue\n```\n\ntext\n```sh\necho new\n```\n";
    let error = plan(unmarked).unwrap_err();
    assert!(
        error.contains("line 9") && error.contains("without a marker"),
        "{error}"
    );

    let misplaced = "<!-- readme-test: output -->\n```text\nx\n```\n";
    assert!(plan(misplaced)
        .unwrap_err()
        .contains("must follow a run block"));
    let reasonless = "<!-- readme-test: skip -->\n```sh\nrm -rf /\n```\n";
    assert!(plan(reasonless).unwrap_err().contains("needs a reason"));
    let unknown = "<!-- readme-test: maybe -->\n```sh\ntrue\n```\n";
    assert!(plan(unknown).unwrap_err().contains("unknown marker"));

    let fine = "<!-- readme-test: run -->\n```sh\necho hi\n```\n\n<!-- readme-test: output (x) -->\n\
                ```text\nhi\n```\n<!-- readme-test: skip (docker) -->\n```sh\ndocker compose up\n```\n";
    let steps = plan(fine).unwrap();
    assert!(matches!(&steps[..], [Step::Run { expected, .. }] if expected == &["hi".to_owned()]));
}

#[test]
fn settings_are_substituted_in_export_lines_only_and_comments_survive() {
    let values = BTreeMap::from([
        ("EVENTS_DIR", "/x y/'z".to_owned()),
        ("BIN", "/t/release".to_owned()),
    ]);
    let mut counts = BTreeMap::new();
    let out = substitute(
        "export EVENTS_DIR=/tmp/events   # where # files go\nexport BIN=target/release\necho $EVENTS_DIR EVENTS_DIR=/no\n",
        &values,
        &mut counts,
    );
    assert_eq!(
        out,
        "export EVENTS_DIR='/x y/'\\''z'   # where # files go\nexport BIN='/t/release'\necho $EVENTS_DIR EVENTS_DIR=/no\n"
    );
    assert_eq!(
        counts,
        BTreeMap::from([("BIN".to_owned(), 1), ("EVENTS_DIR".to_owned(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_native_walk_through_runs_as_written_and_loads_exactly() {
    // Arrange: the README's steps, the test server's coordinates, a scratch database and folder.
    let readme = std::fs::read_to_string(workspace_root().join(README)).unwrap();
    let steps = plan(&readme).unwrap_or_else(|e| panic!("{e}"));

    let maintenance_url = database_url();
    let config: Config = maintenance_url
        .parse()
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is not a connection string: {e}"));
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        other => panic!(
            "the README test needs the test server over TCP (a host name in TEST_DATABASE_URL), got {other:?}"
        ),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let database = ScratchDatabase {
        name: format!("readme_{}", Uuid::new_v4().simple()),
        maintenance_url: maintenance_url.clone(),
    };
    let session = tempfile::Builder::new()
        .prefix("readme-test-")
        .tempdir()
        .unwrap();
    let events_dir = session.path().join("events");
    let bin = target_dir().join("release");
    let values: BTreeMap<&str, String> = BTreeMap::from([
        ("PGHOST", host),
        ("PGPORT", port.to_string()),
        ("PGUSER", user),
        ("EVENTS_DB", database.name.clone()),
        ("EVENTS_DIR", events_dir.display().to_string()),
        ("BIN", bin.display().to_string()),
    ]);
    let mut env: Vec<(String, Option<String>)> = std::env::vars()
        .map(|(key, _)| key)
        .filter(|key| {
            key.starts_with("PG")
                || key.starts_with("INGESTOR_")
                || key.starts_with("GENERATOR_")
                || ["DATABASE_URL", "STACK_ADMIN_URL", "TEST_DATABASE_URL"].contains(&key.as_str())
        })
        .map(|key| (key, None))
        .collect();
    if let Some(password) = config.get_password() {
        env.push((
            "PGPASSWORD".to_owned(),
            Some(String::from_utf8_lossy(password).into_owned()),
        ));
    }
    env.push(("INGESTOR_LISTEN".to_owned(), Some("127.0.0.1:0".to_owned())));
    env.push((
        "GENERATOR_LISTEN".to_owned(),
        Some("127.0.0.1:0".to_owned()),
    ));
    let session = Session { dir: session, env };
    let mut counts = BTreeMap::new();

    // Act and assert, block by block.
    for step in &steps {
        match step {
            Step::Run { block, expected } => {
                let body = substitute(&block.body, &values, &mut counts);
                let started = Instant::now();
                let output = session.command(&body, true).output().unwrap();
                eprintln!(
                    "README.md line {}: exit {} after {:.1} s",
                    block.line,
                    output.status,
                    started.elapsed().as_secs_f64()
                );
                assert!(
                    output.status.success(),
                    "README.md block at line {} failed:\n{body}\n{}",
                    block.line,
                    describe(&output)
                );
                let stdout = String::from_utf8_lossy(&output.stdout);
                let printed: HashSet<&str> = stdout.lines().map(str::trim_end).collect();
                for line in expected {
                    assert!(
                        printed.contains(line.as_str()),
                        "README.md block at line {} did not print the line the README promises:\n\
                         {line}\n{}",
                        block.line,
                        describe(&output)
                    );
                }
            }
            Step::Background { block } => {
                let body = substitute(&block.body, &values, &mut counts);
                let waiting = csv_files(&events_dir).len();
                assert!(
                    waiting > 0,
                    "README.md line {}: no file waits in $EVENTS_DIR",
                    block.line
                );
                let log_path = session
                    .dir
                    .path()
                    .join(format!("background-{}.log", block.line));
                let log = File::create(&log_path).unwrap();
                let mut command = session.command(&body, false);
                command
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .process_group(0);
                let mut group = ProcessGroup {
                    leader: ChildGuard::new(command.spawn().unwrap()),
                };
                let read_log = || {
                    format!(
                        "\n--- log of the block at line {} ---\n{}",
                        block.line,
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    )
                };

                let mut scratch = config.clone();
                scratch.dbname(&database.name);
                let (client, connection) = scratch.connect(NoTls).await.unwrap();
                tokio::spawn(connection);
                wait_for_finished_files(&client, &events_dir, waiting, LOAD_DEADLINE, read_log)
                    .await;
                assert_loaded_exactly(&client, &events_dir).await;
                drop(client);

                group.signal("INT");
                let status = group.leader.wait_with_timeout(STOP_DEADLINE);
                assert!(
                    status.is_some_and(|s| s.success()),
                    "README.md line {}: Ctrl-C did not stop it cleanly ({status:?}){}",
                    block.line,
                    read_log()
                );
            }
        }
    }

    // Every setting the README defines was substituted exactly once: none went missing or moved
    // out of an `export NAME=value` line, where the test would no longer control it.
    let expected: BTreeMap<String, usize> = SETTINGS.iter().map(|s| ((*s).to_owned(), 1)).collect();
    assert_eq!(counts, expected, "settings substituted (name -> times)");
}
