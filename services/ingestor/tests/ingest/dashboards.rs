//! The shipped observability files work against the real services: Prometheus (Debian's
//! `prometheus` package, installed by `.ci/run`) scrapes a running generator, ingestor and
//! PostgreSQL exporter (Debian's `prometheus-postgres-exporter`, see [`PostgresExporter`]) with
//! the project's own scrape config (targets rewritten to the test's ports), every PromQL
//! expression of the dashboards returns data and names only exported metrics, and every SQL
//! query of the Business dashboard returns rows from the test database as the read-only
//! `analyst` role. The shipped alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), and the test's Prometheus loads and evaluates them without error
//! against the running services.
//!
//! Two ingestor replicas run, so that the Pipeline's stat panels are also checked in the states
//! a user must be able to trust: one replica stopped and gone from service discovery (as a
//! stopped container leaves Docker's DNS), then every replica stopped. Each stat panel must
//! still show a finite value, and the readiness panels must say NOT READY, never "No data".

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use stack_tests::{free_port, workspace_root, ChildGuard, TestDatabase};

use crate::helpers::*;
use crate::postgres_exporter::PostgresExporter;

/// The shipped scrape config.
fn shipped_prometheus_config() -> PathBuf {
    workspace_root().join("grafana/prometheus/prometheus.yml")
}

/// The shipped alerting rules and their `promtool test rules` unit tests.
fn shipped_alert_files() -> (PathBuf, PathBuf) {
    let dir = workspace_root().join("grafana/prometheus");
    (dir.join("alerts.yml"), dir.join("alerts.test.yml"))
}

/// Runs `promtool` with `args`, panicking with its output unless it succeeds.
fn promtool(args: &[&std::ffi::OsStr]) {
    let output = match Command::new("promtool").args(args).output() {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run promtool ({e}); install Prometheus: apt-get install -y prometheus \
             (.ci/run does this)"
        ),
    };
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The dashboards Grafana provisions.
fn dashboard_files() -> [PathBuf; 2] {
    let dir = workspace_root().join("grafana/dashboards");
    [dir.join("pipeline.json"), dir.join("business.json")]
}

/// Whether an instant-query result holds at least one series with a finite value. An empty
/// result means the panel shows "No data"; a quantile over a window without observations comes
/// back as `NaN`, which Grafana draws as a gap: neither counts as data.
pub(crate) fn has_finite_sample(result: &Value) -> bool {
    result.as_array().is_some_and(|series| {
        series.iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        })
    })
}

/// The jobs the shipped scrape config defines, in order.
fn job_names(config: &str) -> Vec<String> {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- job_name:"))
        .map(|name| name.trim().trim_matches(['"', '\'']).to_owned())
        .collect()
}

#[test]
fn the_shipped_prometheus_config_passes_promtool() {
    // `check config` also checks the rule files the config names.
    promtool(&[
        "check".as_ref(),
        "config".as_ref(),
        shipped_prometheus_config().as_os_str(),
    ]);
}

#[test]
fn every_alert_fires_when_it_should_and_not_otherwise_in_its_promtool_unit_tests() {
    let (rules, tests) = shipped_alert_files();
    promtool(&["check".as_ref(), "rules".as_ref(), rules.as_os_str()]);
    promtool(&["test".as_ref(), "rules".as_ref(), tests.as_os_str()]);
    // Every alert has at least one test that expects it to fire.
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let tests_text = std::fs::read_to_string(&tests).unwrap();
    for alert in rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fired = tests_text.split("alertname: ").skip(1).any(|t| {
            t.starts_with(alert) && t[alert.len()..].trim_start().starts_with("exp_alerts:\n")
        });
        assert!(fired, "alert {alert} has no test in which it fires");
    }
}

/// Pipeline stat panels whose values this test checks in each state, by title.
const REPLICAS_PANEL: &str = "Replicas ready / expected";
const ALL_READY_PANEL: &str = "All replicas ready";
const DATABASE_PANEL: &str = "Database";

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_returns_data_from_the_running_services() {
    // Arrange: database, two ingestor replicas sharing one input directory, the generator, the
    // PostgreSQL exporter, and Prometheus scraping all of them.
    let db = TestDatabase::create().await;
    let input = tempfile::tempdir().unwrap();
    let replica_a = Ingestor::spawn(&ingestor_url(&db), input.path(), &[]);
    let replica_b = Ingestor::spawn(&ingestor_url(&db), input.path(), &[]);
    let generator = Generator::spawn(input.path());
    let exporter = PostgresExporter::spawn(&db);
    let shipped = std::fs::read_to_string(shipped_prometheus_config()).unwrap();
    assert_eq!(
        job_names(&shipped),
        ["generator", "ingestor", "postgres"],
        "the shipped scrape config's jobs changed; update this test's target rewriting"
    );
    let prometheus =
        Prometheus::spawn(&[("generator", generator.port), ("postgres", exporter.port)]);
    prometheus.discover_ingestors(&[replica_a.port, replica_b.port]);
    prometheus.wait_for_targets(4, 0, Duration::from_secs(30));
    // Let the load run so that rates and histograms have samples.
    tokio::time::sleep(Duration::from_secs(20)).await;

    let dashboards: Vec<Value> = dashboard_files()
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    let mut promql = Vec::new();
    let mut sql = Vec::new();
    for dashboard in &dashboards {
        collect_queries(dashboard, &mut promql, &mut sql);
    }
    assert!(promql.len() >= 10, "too few PromQL queries: {promql:#?}");
    assert!(sql.len() >= 5, "too few SQL queries: {sql:#?}");

    // Assert: every metric a dashboard names is exported by a service. The Kafka row's come
    // from an ingestor with the Kafka source (librdkafka's mock cluster), which has loaded
    // messages; Prometheus does not scrape it (the replica panels count the two above), so
    // the Kafka panels' queries are checked to run and fall back to 0 there.
    let mock = crate::kafka_source::cluster(2);
    let (lines, _) = crate::kafka_source::events(1, 500, 148, Faults::default());
    crate::kafka_source::produce(&mock, &lines, 2);
    let kafka_envs = crate::kafka_source::kafka_envs(&mock, &[]);
    let kafka_db = TestDatabase::create().await;
    let kafka_input = tempfile::tempdir().unwrap();
    let kafka_replica = Ingestor::spawn(
        &ingestor_url(&kafka_db),
        kafka_input.path(),
        &crate::kafka_source::borrowed(&kafka_envs),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let kafka_metrics = loop {
        let metrics = http_get(kafka_replica.port, "/metrics").1;
        if metrics.contains("ingestor_kafka_consumer_lag_messages{") {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "the Kafka ingestor never reported its lag"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(kafka_replica);
    let exposition = format!(
        "{}\n{}\n{}\n{}",
        http_get(generator.port, "/metrics").1,
        http_get(replica_a.port, "/metrics").1,
        kafka_metrics,
        exporter.metrics()
    );
    for (panel, expr) in &promql {
        for metric in metric_names(expr) {
            assert!(
                exposition.lines().any(|l| l
                    .strip_prefix(metric.as_str())
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))),
                "panel {panel:?} queries {metric}, which no service exports"
            );
        }
    }

    // Assert: every PromQL expression returns data (retrying briefly for slow first samples).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut empty: Vec<String>;
    loop {
        empty = Vec::new();
        for (panel, expr) in &promql {
            let query = expand_promql(expr);
            let (status, body) = prometheus.query(&query);
            let json: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{panel}: {query}: bad response {status} {e}: {body}"));
            assert_eq!(
                json["status"], "success",
                "panel {panel:?}: {query} failed: {body}"
            );
            if !has_finite_sample(&json["data"]["result"]) {
                empty.push(format!("{panel}: {query} -> {}", json["data"]["result"]));
            }
        }
        if empty.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        empty.is_empty(),
        "PromQL queries without a finite sample: {empty:#?}"
    );

    // Assert: every Business query returns rows, reading as the read-only analyst role.
    let client = db.client().await;
    client.batch_execute("SET ROLE analyst").await.unwrap();
    for (panel, raw) in &sql {
        let query = expand_sql(raw, "now() - interval '1 day'", "now() + interval '1 day'");
        let messages = client
            .simple_query(&query)
            .await
            .unwrap_or_else(|e| panic!("panel {panel:?}: {query}\nfailed: {e:?}"));
        let rows: Vec<_> = messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect();
        assert!(
            !rows.is_empty(),
            "panel {panel:?} returned no rows: {query}"
        );
        assert!(
            rows.iter()
                .any(|r| (0..r.len()).all(|i| r.get(i).is_some())),
            "panel {panel:?} returned only rows with NULLs: {query}"
        );
    }
    // Assert: Prometheus loaded every shipped alert and evaluates it without error against the
    // running services, and every metric an alert names is exported.
    let rules = prometheus.alert_rules();
    let shipped = std::fs::read_to_string(shipped_alert_files().0).unwrap();
    assert_eq!(
        rules.len(),
        shipped.matches("- alert: ").count(),
        "Prometheus did not load every alert: {rules:#?}"
    );
    for rule in &rules {
        assert_eq!(
            rule["health"], "ok",
            "alert rule fails to evaluate: {rule:#}"
        );
        let query = rule["query"].as_str().unwrap();
        for metric in metric_names(query) {
            assert!(
                exposition.lines().any(|l| l
                    .strip_prefix(metric.as_str())
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))),
                "alert {} queries {metric}, which no service exports",
                rule["name"]
            );
        }
    }

    // Assert: all is well, and the summary says so.
    let pipeline = &dashboards[0];
    await_stat_values(
        &prometheus,
        pipeline,
        &[
            (REPLICAS_PANEL, &[2.0, 2.0]),
            (ALL_READY_PANEL, &[1.0]),
            (DATABASE_PANEL, &[1.0]),
        ],
    );

    // Act: one replica stops and leaves service discovery, as a stopped container leaves
    // Docker's DNS answer.
    drop(replica_b);
    prometheus.discover_ingestors(&[replica_a.port]);
    prometheus.wait_for_targets(3, 0, Duration::from_secs(30));
    // Assert: it is still expected, so it counts as missing, and not all replicas are ready.
    await_stat_values(
        &prometheus,
        pipeline,
        &[(REPLICAS_PANEL, &[1.0, 2.0]), (ALL_READY_PANEL, &[0.0])],
    );

    // Act: the other replica stops too (its target stays listed, and is scraped as down).
    drop(replica_a);
    prometheus.wait_for_targets(2, 1, Duration::from_secs(30));
    // Assert: every stat panel still shows a number: none ready of two, NOT READY, database
    // not seen up by anyone.
    await_stat_values(
        &prometheus,
        pipeline,
        &[
            (REPLICAS_PANEL, &[0.0, 2.0]),
            (ALL_READY_PANEL, &[0.0]),
            (DATABASE_PANEL, &[0.0]),
        ],
    );
    drop(prometheus);
    drop(exporter);
    drop(generator);
}

/// The PromQL of each stat panel of a dashboard (rows included): `(title, exprs)`.
fn stat_panels(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    let mut stats = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        if panel["type"] == "stat" {
            let exprs = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    t["expr"]
                        .as_str()
                        .expect("stat target without expr")
                        .to_owned()
                })
                .collect();
            stats.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                exprs,
            ));
        }
        stats.extend(stat_panels(panel));
    }
    stats
}

/// Waits until every stat panel's every query returns exactly one finite value (what the stat
/// shows) and the panels named in `expected` show those values, in target order; panics with
/// what they showed otherwise.
fn await_stat_values(prometheus: &Prometheus, dashboard: &Value, expected: &[(&str, &[f64])]) {
    let stats = stat_panels(dashboard);
    for (title, _) in expected {
        assert!(
            stats.iter().any(|(t, _)| t == title),
            "no stat panel {title:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut wrong = Vec::new();
        for (title, exprs) in &stats {
            let values: Vec<Option<f64>> = exprs
                .iter()
                .map(|expr| prometheus.single_finite_value(&expand_promql(expr)))
                .collect();
            let want = expected.iter().find(|(t, _)| t == title).map(|(_, v)| *v);
            let finite = values.iter().all(Option::is_some);
            let as_expected =
                want.is_none_or(|want| values.iter().copied().eq(want.iter().map(|v| Some(*v))));
            if !finite || !as_expected {
                wrong.push(format!(
                    "{title}: {exprs:?} -> {values:?}, expected {want:?}"
                ));
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stat panels without one finite value, or not the expected one: {wrong:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Walks a dashboard (panels, nested row panels) and collects `(panel title, query)` pairs:
/// PromQL `expr`s of Prometheus targets and `rawSql` of PostgreSQL targets.
pub(crate) fn collect_queries(
    node: &Value,
    promql: &mut Vec<(String, String)>,
    sql: &mut Vec<(String, String)>,
) {
    for panel in node["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let datasource = if target["datasource"].is_object() {
                &target["datasource"]
            } else {
                &panel["datasource"]
            };
            match datasource["type"].as_str() {
                Some("prometheus") => {
                    let expr = target["expr"]
                        .as_str()
                        .expect("Prometheus target without expr");
                    promql.push((title.clone(), expr.to_owned()));
                }
                Some("grafana-postgresql-datasource" | "postgres") => {
                    let raw = target["rawSql"]
                        .as_str()
                        .expect("PostgreSQL target without rawSql");
                    sql.push((title.clone(), raw.to_owned()));
                }
                other => panic!("panel {title:?} uses an unexpected datasource {other:?}"),
            }
        }
        collect_queries(panel, promql, sql);
    }
}

/// Grafana's interval variables, as a fixed window.
pub(crate) fn expand_promql(expr: &str) -> String {
    ["$__rate_interval", "$__interval", "$__range"]
        .iter()
        .fold(expr.to_owned(), |e, var| e.replace(var, "1m"))
}

/// Grafana's PostgreSQL time macros for the range `from` to `to` (SQL expressions of type
/// timestamptz, e.g. a day either side of now: the generator's late events lie in the past).
pub(crate) fn expand_sql(raw: &str, from: &str, to: &str) -> String {
    const MACRO: &str = "$__timeFilter(";
    let mut sql = raw.to_owned();
    while let Some(start) = sql.find(MACRO) {
        let args = start + MACRO.len();
        let end = args + sql[args..].find(')').expect("unclosed $__timeFilter(");
        let column = sql[args..end].trim().to_owned();
        sql.replace_range(start..=end, &format!("{column} BETWEEN {from} AND {to}"));
    }
    let sql = sql
        .replace("$__timeFrom()", &format!("({from})"))
        .replace("$__timeTo()", &format!("({to})"));
    assert!(!sql.contains('$'), "an unexpanded Grafana macro in: {sql}");
    sql
}

/// The exported metrics an expression names (identifiers starting with a service's namespace,
/// the process collector's, or `pg_` for the PostgreSQL exporter).
pub(crate) fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            ["generator_", "ingestor_", "process_", "pg_"]
                .iter()
                .any(|prefix| t.starts_with(prefix))
        })
        .map(str::to_owned)
        .collect()
}

/// Collects a child's output lines, echoing them when `TEST_LOG` is set.
pub(crate) fn capture(
    name: &'static str,
    streams: Vec<Box<dyn Read + Send>>,
) -> Arc<Mutex<Vec<String>>> {
    let logs = Arc::new(Mutex::new(Vec::new()));
    for stream in streams {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("[{name}] {line}");
                }
                logs.lock().unwrap().push(line);
            }
        });
    }
    logs
}

/// The real generator binary, writing files into the ingestor's input directory.
struct Generator {
    _guard: ChildGuard,
    /// Holds its ready file (`--ready-file`).
    _ready_dir: tempfile::TempDir,
    port: u16,
}

impl Generator {
    fn spawn(out: &Path) -> Generator {
        // Integration tests run from target/<profile>/deps; the workspace's binaries sit one up.
        let exe = std::env::current_exe().unwrap();
        let binary = exe
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("generator");
        assert!(
            binary.is_file(),
            "{} is missing: run cargo build -p generator (scripts/test builds it through \
             cargo test --workspace)",
            binary.display()
        );
        let ready_dir = tempfile::tempdir().unwrap();
        let ready_file = ready_dir.path().join("ready.json");
        let mut child = Command::new(&binary)
            .arg("--ready-file")
            .arg(&ready_file)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--rate",
                "500",
                "--rows",
                "50",
                "--invalid-ratio",
                "0.05",
                "--duplicate-ratio",
                "0.02",
                "--late-ratio",
                "0.02",
                "--log-format",
                "json",
                "--out",
            ])
            .arg(out)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = capture(
            "generator",
            vec![
                Box::new(child.stdout.take().unwrap()),
                Box::new(child.stderr.take().unwrap()),
            ],
        );
        let mut guard = ChildGuard::new(child);
        match guard.wait_for_ready_file(&ready_file, Duration::from_secs(20)) {
            Ok(listen) => Generator {
                _guard: guard,
                _ready_dir: ready_dir,
                port: listen.port(),
            },
            Err(why) => panic!(
                "generator did not start: {why}: {:#?}",
                logs.lock().unwrap()
            ),
        }
    }
}

/// A real Prometheus server with the shipped scrape jobs pointed at the test's ports.
pub(crate) struct Prometheus {
    /// Kills it when the test ends.
    _guard: ChildGuard,
    port: u16,
    logs: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

/// The file the `ingestor` job discovers its targets from (see [`Prometheus::discover_ingestors`]).
const INGESTOR_TARGETS: &str = "ingestor-targets.json";

impl Prometheus {
    /// Starts it scraping every second: one static target per `(job, port)` of `static_jobs`,
    /// and the ingestor replicas [`discover_ingestors`](Self::discover_ingestors) lists, through
    /// file-based discovery, which stands in for the shipped Docker DNS discovery: a replica
    /// taken out of the list disappears from Prometheus, as a stopped container disappears from
    /// DNS.
    pub(crate) fn spawn(static_jobs: &[(&str, u16)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INGESTOR_TARGETS), "[]").unwrap();
        let mut config = format!(
            "# The shipped grafana/prometheus/prometheus.yml with the test's targets.\n\
             global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {:?}\n\
             scrape_configs:\n\
             \x20 - job_name: ingestor\n    file_sd_configs:\n      - files: [{:?}]\n        refresh_interval: 1s\n",
            shipped_alert_files().0,
            dir.path().join(INGESTOR_TARGETS)
        );
        for (job, port) in static_jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let mut child = match Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start prometheus ({e}); install it: apt-get install -y prometheus \
                 (.ci/run does this)"
            ),
        };
        let logs = capture(
            "prometheus",
            vec![
                Box::new(child.stdout.take().unwrap()),
                Box::new(child.stderr.take().unwrap()),
            ],
        );
        Prometheus {
            _guard: ChildGuard::new(child),
            port,
            logs,
            dir,
        }
    }

    /// Makes the `ingestor` job's targets the replicas listening on `ports`, and only those.
    pub(crate) fn discover_ingestors(&self, ports: &[u16]) {
        let targets: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let list = serde_json::json!([{ "targets": targets }]).to_string();
        // Written aside and renamed in, so that Prometheus never reads half a file.
        let path = self.dir.path().join(INGESTOR_TARGETS);
        let partial = path.with_extension("partial");
        std::fs::write(&partial, list).unwrap();
        std::fs::rename(&partial, &path).unwrap();
    }

    /// Waits until Prometheus scrapes exactly `up` targets successfully and `down` unsuccessfully.
    pub(crate) fn wait_for_targets(&self, up: usize, down: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let (status, body) = http_get(self.port, "/api/v1/targets?state=active");
            if status == 200 {
                let json: Value = serde_json::from_str(&body).unwrap();
                let targets = json["data"]["activeTargets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let health = |h: &str| targets.iter().filter(|t| t["health"] == h).count();
                if targets.len() == up + down && health("up") == up && health("down") == down {
                    return;
                }
                last = body;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "Prometheus did not scrape {up} targets up and {down} down: {last}\nlogs: {:#?}",
            self.logs.lock().unwrap()
        );
    }

    /// The alerting rules Prometheus has loaded, once each has been evaluated at least once.
    fn alert_rules(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = http_get(self.port, "/api/v1/rules?type=alert");
            let json: Value = serde_json::from_str(&body).unwrap();
            let rules: Vec<Value> = json["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            if (!rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown"))
                || Instant::now() >= deadline
            {
                return rules;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The value of an instant query that returns exactly one series with a finite value;
    /// `None` for anything else (no series: "No data"; `NaN`: a gap; several: not one stat).
    fn single_finite_value(&self, promql: &str) -> Option<f64> {
        let (_, body) = self.query(promql);
        let json: Value = serde_json::from_str(&body).ok()?;
        match json["data"]["result"].as_array()?.as_slice() {
            [series] => series["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite()),
            _ => None,
        }
    }

    /// An instant query through the HTTP API: (status code, body).
    pub(crate) fn query(&self, promql: &str) -> (u16, String) {
        http_get(
            self.port,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        )
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
