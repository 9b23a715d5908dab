//! The HTTP surface of a running ingestor: `/metrics` counts exactly what a known input should
//! produce and follows the naming rules, `/status` reports the ledger, and readiness follows the
//! database while liveness ignores it. The application runs inside the test (`spawn_app`), except
//! where the ingestor's own process is asserted on (its process collector's metrics).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use stack_tests::TestDatabase;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::*;

/// How long readiness may take to follow the database, either way.
const READINESS_BOUND: Duration = Duration::from_secs(15);

/// Duplicates of recently stored events are recognised in memory (`dedup_memory_ids`) instead of
/// by a failed COPY and a database lookup. The memory must never change a result: the same
/// files load to the same exact accounting with it and without it, and with it (one loader,
/// duplicates repeating recent events, as the generator writes them) no chunk needs a lookup.
#[tokio::test(flavor = "multi_thread")]
async fn the_id_memory_saves_every_lookup_and_never_changes_a_result() {
    // Arrange: files whose duplicates repeat events of the same chunk, of earlier chunks of the
    // same file, of earlier files in the same transaction and of earlier transactions.
    let source = tempfile::tempdir().unwrap();
    let faults = Faults {
        invalid: 0.01,
        duplicate: 0.05,
        late: 0.0,
    };
    generate(source.path(), 8, 1_000, 21, faults);
    let files = event_files(source.path());
    let expected = expected(&files);
    let mut lookups = Vec::new();
    for memory in ["16384", "0"] {
        let db = TestDatabase::create().await;
        let input = tempfile::tempdir().unwrap();
        let env = [
            ("INGESTOR_LOADERS", "1"),
            ("INGESTOR_CHUNK_ROWS", "250"),
            ("INGESTOR_BATCH_MAX_FILES", "2"),
            ("INGESTOR_DEDUP_MEMORY_IDS", memory),
        ];
        let ingestor = spawn_app(&ingestor_url(&db), input.path(), &env).await;
        // Act: publish the files atomically, oldest first.
        for file in &files {
            let name = file.file_name().unwrap();
            let staged = source.path().join(".staged");
            std::fs::copy(file, &staged).unwrap();
            std::fs::rename(&staged, input.path().join(name)).unwrap();
        }
        wait_for_ledger(&db, input.path(), files.len(), Duration::from_secs(60)).await;
        // Assert
        assert_exact(&db, &expected).await;
        let (status, body) = get(ingestor.port, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        lookups.push(Exposition::parse(&body).value("ingestor_dedup_lookups_total", &[]));
        ingestor.stop().await.unwrap();
    }
    assert_eq!(lookups[0], 0.0, "with the memory, no chunk needed a lookup");
    assert!(
        lookups[1] >= 8.0,
        "without the memory, duplicates cost lookups: {lookups:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_what_a_known_input_should_produce() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let known = KnownFile::write(&dir.path().join("known.csv"));
    let started = unix_now();
    let ingestor = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    wait_for_ledger(&db, dir.path(), 1, Duration::from_secs(30)).await;
    // Act
    let (status, body) = get(ingestor.port, "/metrics").await;
    // Assert
    assert_eq!(status, 200, "{body}");
    let metrics = Exposition::parse(&body);
    let scraped = unix_now();
    let rows = |outcome| metrics.value("ingestor_rows_total", &[("outcome", outcome)]);
    assert_eq!(rows("accepted"), 985.0);
    assert_eq!(rows("duplicate"), 5.0);
    assert_eq!(rows("rejected"), 10.0);
    assert_eq!(
        known.accepted + known.duplicates + known.rejected_total(),
        1_000
    );
    for (reason, n) in &known.rejected {
        assert_eq!(
            metrics.value("ingestor_rows_rejected_total", &[("reason", reason)]),
            *n as f64,
            "rejections with reason {reason}"
        );
    }
    let other_reasons: f64 = metrics
        .samples("ingestor_rows_rejected_total")
        .filter(|(labels, _)| !known.rejected.contains_key(labels["reason"].as_str()))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(other_reasons, 0.0, "rejections with an unexpected reason");
    assert_eq!(
        metrics.value("ingestor_files_total", &[("outcome", "loaded")]),
        1.0
    );
    assert_eq!(
        metrics.value("ingestor_files_total", &[("outcome", "failed")]),
        0.0
    );
    assert_eq!(
        metrics.value("ingestor_file_commit_latency_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        metrics.value("ingestor_read_bytes_total", &[]),
        known.bytes as f64
    );
    let failed_by_reason: Vec<(String, f64)> = metrics
        .samples("ingestor_files_failed_total")
        .map(|(labels, v)| (labels["reason"].clone(), v))
        .collect();
    // One series per failure code, error_budget_exceeded included, pre-created at 0.
    let mut codes: Vec<&str> = ingestor::model::FileFailure::codes().collect();
    codes.sort_unstable();
    let reasons: Vec<&str> = failed_by_reason.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(reasons, codes, "{failed_by_reason:?}");
    assert!(failed_by_reason.iter().all(|(_, v)| *v == 0.0));
    // Freshness and saturation: the commit happened during the test, the loaders were busy
    // for some of it, and the database answered.
    let last_commit = metrics.value("ingestor_last_commit_timestamp_seconds", &[]);
    assert!(
        (started..=scraped).contains(&last_commit),
        "last commit {last_commit} outside {started}..={scraped}"
    );
    assert!(metrics.value("ingestor_loader_busy_seconds_total", &[]) > 0.0);
    assert_eq!(metrics.value("ingestor_loaders", &[]), 2.0);
    assert_eq!(metrics.value("ingestor_database_up", &[]), 1.0);
    // The known file's landing time, or a scan's time once it has gone: a time, not an age.
    let oldest = metrics.value("ingestor_backlog_oldest_file_timestamp_seconds", &[]);
    assert!(
        (started - 60.0..=scraped).contains(&oldest),
        "oldest waiting file's time {oldest} outside {started} - 60 s ..= {scraped}"
    );
    // The process collector reports the ingestor's process (its start time has a resolution of
    // a second).
    let start_time = metrics.value("process_start_time_seconds", &[]);
    assert!(
        (started - 2.0..=scraped).contains(&start_time),
        "process start time {start_time} outside {started} - 2 s ..= {scraped}"
    );
    assert!(metrics.value("process_resident_memory_bytes", &[]) > 0.0);
    assert_naming_rules(&metrics);
    drop(ingestor);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_backlog_totals_and_version() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let known = KnownFile::write(&dir.path().join("known.csv"));
    let ingestor = spawn_app(
        &ingestor_url(&db),
        dir.path(),
        &[("INGESTOR_INSTANCE_ID", "status-test")],
    )
    .await;
    wait_for_ledger(&db, dir.path(), 1, Duration::from_secs(30)).await;
    // Act
    let (status, body) = get(ingestor.port, "/status").await;
    // Assert
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["instance_id"], "status-test", "{json:#}");
    assert_eq!(json["backlog"]["files"], 0, "{json:#}");
    assert_eq!(json["backlog"]["bytes"], 0, "{json:#}");
    assert!(
        json["backlog"]["oldest_age_seconds"].is_number(),
        "{json:#}"
    );
    assert!(json["last_commit"].is_string(), "{json:#}");
    assert_eq!(json["recent_failures"], serde_json::json!([]), "{json:#}");
    let ledger = db
        .client()
        .await
        .query_one(
            "SELECT count(*), sum(lines)::bigint, sum(accepted)::bigint, \
             sum(duplicates)::bigint, sum(rejected)::bigint FROM ingest_files \
             WHERE status = 'loaded'",
            &[],
        )
        .await
        .unwrap();
    let totals = &json["totals"];
    assert_eq!(totals["files_loaded"], ledger.get::<_, i64>(0));
    assert_eq!(totals["files_failed"], 0);
    assert_eq!(totals["lines"], ledger.get::<_, i64>(1));
    assert_eq!(totals["accepted"], ledger.get::<_, i64>(2));
    assert_eq!(totals["duplicates"], ledger.get::<_, i64>(3));
    assert_eq!(totals["rejected"], ledger.get::<_, i64>(4));
    assert_eq!(totals["lines"], 1_000);
    assert_eq!(totals["accepted"], known.accepted);
    assert_eq!(totals["duplicates"], known.duplicates);
    assert_eq!(totals["rejected"], known.rejected_total());
    drop(ingestor);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_answers_503_with_a_reason_when_the_database_is_unreachable() {
    // Arrange: the proxy never runs, so nothing listens where the database should be.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = StoppableProxy::start(tcp_address(&db)).await;
    let addr = proxy.addr;
    proxy.stop().await;
    let ingestor = spawn_app(
        &format!("postgres://ingestor@{addr}/{}", db.name),
        dir.path(),
        &[],
    )
    .await;
    // Act
    let started = Instant::now();
    let (status, body) = get(ingestor.port, "/status").await;
    // Assert
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "/status took {:?}",
        started.elapsed()
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["database_error"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{json:#}"
    );
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    drop(ingestor);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_turns_503_when_the_database_goes_away_and_200_when_it_returns() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = StoppableProxy::start(tcp_address(&db)).await;
    let ingestor = spawn_app(
        &format!("postgres://ingestor@{}/{}", proxy.addr, db.name),
        dir.path(),
        &[],
    )
    .await;
    wait_for(&ingestor, "/readyz", 200, "at start").await;
    // Act: the database goes away.
    proxy = proxy.stop().await;
    // Assert
    let body = wait_for(&ingestor, "/readyz", 503, "with the proxy down").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "503 without a reason: {json:#}"
    );
    let (live, body) = get(ingestor.port, "/livez").await;
    assert_eq!(
        live, 200,
        "liveness must not depend on the database: {body}"
    );
    // Nothing else reaches the database meanwhile (no files), so the gauges keep the check's
    // answer.
    assert_eq!(gauge(&ingestor, "ingestor_database_up").await, 0.0);
    assert_eq!(gauge(&ingestor, "ingestor_ready").await, 0.0);
    // Act: the database comes back on the same address.
    proxy = proxy.restart().await;
    // Assert
    wait_for(&ingestor, "/readyz", 200, "after the proxy returned").await;
    let (live, _) = get(ingestor.port, "/livez").await;
    assert_eq!(live, 200);
    assert_eq!(gauge(&ingestor, "ingestor_database_up").await, 1.0);
    assert_eq!(gauge(&ingestor, "ingestor_ready").await, 1.0);
    drop(ingestor);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_pool_gauges_report_open_connections_after_a_load() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    KnownFile::write(&dir.path().join("known.csv"));
    let ingestor = spawn_app(&ingestor_url(&db), dir.path(), &[]).await;
    wait_for_ledger(&db, dir.path(), 1, Duration::from_secs(30)).await;
    // Act
    let (status, body) = get(ingestor.port, "/metrics").await;
    // Assert
    assert_eq!(status, 200, "{body}");
    let metrics = Exposition::parse(&body);
    let connections = metrics.value("ingestor_database_pool_connections", &[]);
    let idle = metrics.value("ingestor_database_pool_idle_connections", &[]);
    assert!(connections >= 1.0, "{connections} pool connections");
    assert!(
        (0.0..=connections).contains(&idle),
        "{idle} idle of {connections}"
    );
    // The default pool_size, and nobody waiting for a connection once the load is done.
    assert_eq!(
        metrics.value("ingestor_database_pool_max_connections", &[]),
        4.0
    );
    assert_eq!(
        metrics.value("ingestor_database_pool_waiting_checkouts", &[]),
        0.0
    );
    assert_eq!(metrics.types["ingestor_database_pool_connections"], "gauge");
    assert_eq!(
        metrics.types["ingestor_database_pool_idle_connections"],
        "gauge"
    );
    drop(ingestor);
}

#[tokio::test(flavor = "multi_thread")]
async fn backlog_gauges_keep_moving_while_the_only_loader_waits_on_a_lock() {
    // Arrange: one loader, whose transaction waits behind a lock the test holds on `events`.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let ingestor = spawn_app(&ingestor_url(&db), dir.path(), &[("INGESTOR_LOADERS", "1")]).await;
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    generate(dir.path(), 1, 50, 31, Faults::default());
    wait_until_a_session_waits_for_a_lock(&db.client().await, String::new).await;
    // Act: more files land while that transaction waits.
    generate(dir.path(), 3, 50, 32, Faults::default());
    // Assert: the backlog gauges count them all (the file being loaded still waits too), and
    // the oldest file's time stays that of the first file.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(ingestor.port, "/metrics").await;
        let metrics = Exposition::parse(&body);
        let files = metrics.value("ingestor_backlog_files", &[]);
        if files == 4.0 {
            let oldest = metrics.value("ingestor_backlog_oldest_file_timestamp_seconds", &[]);
            assert!(unix_now() - oldest > 0.0, "oldest waiting file at {oldest}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog gauges stood still while the loader waited: {files} files"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    locker.batch_execute("ROLLBACK").await.unwrap();
    wait_for_ledger(&db, dir.path(), 4, Duration::from_secs(30)).await;
    drop(ingestor);
}

/// Now as Unix time in seconds, as the `_timestamp_seconds` gauges report it.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// A known input, built by hand.

/// A kind of broken row: its reason code, how many, and how to write one (given a timestamp).
type PlannedRejection = (&'static str, u64, fn(&str) -> String);

/// What [`KnownFile::write`] put in the file.
struct KnownFile {
    /// File size in bytes.
    bytes: u64,
    /// Valid rows with a new event_id.
    accepted: u64,
    /// Valid rows repeating an earlier event_id of the file.
    duplicates: u64,
    /// Rejected rows by reason code.
    rejected: BTreeMap<&'static str, u64>,
}

impl KnownFile {
    /// Writes 1,000 data lines: 985 valid unique rows, 5 exact repeats of earlier rows, and 10
    /// rows that break the contract (4 `bad_uuid`, 3 `bad_price`, 2 `unknown_event_type`,
    /// 1 `bad_integer`), spread through the file. Timestamps are a minute old, so none is late
    /// enough or early enough to matter.
    fn write(path: &Path) -> KnownFile {
        let ts = (Utc::now() - chrono::Duration::minutes(1))
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let valid = |i: u64| {
            format!(
                "{},{},{},purchase,{}.{:02},{ts}\n",
                Uuid::new_v4(),
                1_000 + i,
                2_000 + i % 50,
                1 + i % 500,
                i % 100
            )
        };
        let bad: [PlannedRejection; 4] = [
            ("bad_uuid", 4, |ts| {
                format!("not-a-uuid,1,2,purchase,9.99,{ts}\n")
            }),
            ("bad_price", 3, |ts| {
                format!("{},1,2,purchase,12.345,{ts}\n", Uuid::new_v4())
            }),
            ("unknown_event_type", 2, |ts| {
                format!("{},1,2,teleport,9.99,{ts}\n", Uuid::new_v4())
            }),
            ("bad_integer", 1, |ts| {
                format!("{},-7,2,purchase,9.99,{ts}\n", Uuid::new_v4())
            }),
        ];
        let mut text = String::from(event_contract::HEADER_LINE);
        text.push('\n');
        let mut written: Vec<String> = Vec::new();
        let mut rejected = BTreeMap::new();
        let mut rejects = bad
            .iter()
            .flat_map(|(code, n, line)| (0..*n).map(move |_| (*code, *line)));
        let (mut accepted, mut duplicates) = (0, 0);
        for i in 0..1_000_u64 {
            // Every 90th line from the 50th is a rejection (10 of them), every 150th from the
            // 100th repeats an earlier valid row (5 of them); the rest are new valid rows.
            let line = if i % 90 == 50 && i < 950 {
                let (code, line) = rejects.next().unwrap();
                *rejected.entry(code).or_insert(0) += 1;
                line(&ts)
            } else if i % 150 == 100 && duplicates < 5 {
                duplicates += 1;
                written[written.len() / 2].clone()
            } else {
                accepted += 1;
                let line = valid(i);
                written.push(line.clone());
                line
            };
            text.push_str(&line);
        }
        assert!(rejects.next().is_none(), "every planned rejection written");
        // Written under a hidden name, then renamed: the ingestor never sees half a file.
        let tmp = path.with_file_name(".known.csv.tmp");
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
        KnownFile {
            bytes: text.len() as u64,
            accepted,
            duplicates,
            rejected,
        }
    }

    fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

// ---------------------------------------------------------------------------------------------
// The Prometheus text exposition, parsed by hand.

/// The samples and `# TYPE`s of one scrape.
struct Exposition {
    /// Metric family name to its type (`counter`, `gauge`, `histogram`, ...).
    types: HashMap<String, String>,
    /// (sample name, labels, value).
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    /// Parses `name{label="v",...} value` lines; `# TYPE` lines give the types, other `#`
    /// lines and blank lines are skipped.
    fn parse(text: &str) -> Exposition {
        let mut exposition = Exposition {
            types: HashMap::new(),
            samples: Vec::new(),
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                exposition.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
                None => (series, BTreeMap::new()),
            };
            exposition.samples.push((name.to_owned(), labels, value));
        }
        exposition
    }

    /// The samples named `name`, with their labels.
    fn samples<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(n, _, _)| n == name)
            .map(|(_, labels, v)| (labels, *v))
    }

    /// The value of the sample `name` with exactly `labels`.
    ///
    /// # Panics
    /// When there is no such sample.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples(name)
            .find(|(l, _)| **l == wanted)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }
}

/// `a="x",b="y\"z"` to a map, unescaping `\\`, `\"` and `\n`.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().unwrap() {
                (_, '\\') => match chars.next().unwrap().1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// Every family is `ingestor_[a-z_]+` (or the process collector's `process_[a-z_]+`), counters
/// end in `_total`, and every `_seconds` histogram spans the dashboards' range (a 5 ms bucket, and
/// buckets up to an hour, so that an outage does not flat-line the quantiles at a minute).
fn assert_naming_rules(metrics: &Exposition) {
    assert!(!metrics.types.is_empty(), "no # TYPE lines");
    let mut problems = String::new();
    for (name, kind) in &metrics.types {
        let well_formed = ["ingestor_", "process_"].iter().any(|prefix| {
            name.strip_prefix(prefix).is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
        });
        if !well_formed {
            writeln!(problems, "{name}: not ingestor_[a-z_]+").unwrap();
        }
        if kind == "counter" && !name.ends_with("_total") {
            writeln!(problems, "{name}: a counter not ending in _total").unwrap();
        }
        if kind == "histogram" && name.contains("_seconds") {
            let bucket = format!("{name}_bucket");
            for le in ["0.005", "60", "3600"] {
                if !metrics.samples(&bucket).any(|(l, _)| l["le"] == le) {
                    writeln!(problems, "{name}: no le=\"{le}\" bucket").unwrap();
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "metric naming rules broken:\n{problems}"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP and readiness helpers.

/// [`http_get`] off the runtime's threads: it blocks, and the proxy the ingestor talks through
/// runs on this runtime.
async fn get(port: u16, path: &str) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_get(port, &path))
        .await
        .unwrap()
}

/// The value of an unlabelled metric on the ingestor's `/metrics`.
async fn gauge(ingestor: &TestApp, name: &str) -> f64 {
    let (status, body) = get(ingestor.port, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Exposition::parse(&body).value(name, &[])
}

/// Polls `path` every 100 ms until it answers `status`, within [`READINESS_BOUND`]; the body.
async fn wait_for(ingestor: &TestApp, path: &str, status: u16, when: &str) -> String {
    let deadline = Instant::now() + READINESS_BOUND;
    loop {
        let (got, body) = get(ingestor.port, path).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} {when}: still {got} {body} after {READINESS_BOUND:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A forwarder that can be switched off and on again at the same address.

/// A TCP forwarder to PostgreSQL. Stopping it closes the listener (new connections are refused)
/// and every connection it carries; restarting listens on the same address again, so the
/// ingestor's configuration stays valid through the outage.
struct StoppableProxy {
    /// Where clients connect; the same across restarts.
    addr: SocketAddr,
    upstream: SocketAddr,
    /// Cancels the accept loop and every pair; `None` while stopped.
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl StoppableProxy {
    /// Listens on a free port of 127.0.0.1.
    async fn start(upstream: SocketAddr) -> StoppableProxy {
        let mut proxy = StoppableProxy {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream,
            running: None,
        };
        proxy.listen().await;
        proxy
    }

    async fn listen(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        // The address was just in use (its connections may linger in TIME_WAIT).
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(64).unwrap();
        self.addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let upstream = self.upstream;
        let accept = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                loop {
                    let client = tokio::select! {
                        () = cancel.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((client, _)) => client,
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    tokio::spawn(pipe(client, upstream, cancel.clone()));
                }
            }
        });
        self.running = Some((cancel, accept));
    }

    /// Closes the listener and every live connection; returns once the listener is closed.
    async fn stop(mut self) -> StoppableProxy {
        if let Some((cancel, accept)) = self.running.take() {
            cancel.cancel();
            let _ = accept.await;
        }
        self
    }

    /// Listens again on the same address.
    async fn restart(mut self) -> StoppableProxy {
        assert!(self.running.is_none(), "the proxy is already running");
        self.listen().await;
        self
    }
}

impl Drop for StoppableProxy {
    fn drop(&mut self) {
        if let Some((cancel, accept)) = self.running.take() {
            cancel.cancel();
            accept.abort();
        }
    }
}

/// Carries one connection until either side closes or the proxy stops (then both sockets are
/// dropped, and the peers read end-of-file).
async fn pipe(mut client: TcpStream, upstream: SocketAddr, cancel: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = cancel.cancelled() => {}
    }
}
