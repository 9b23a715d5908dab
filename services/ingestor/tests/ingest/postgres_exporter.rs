//! PostgreSQL's metrics as the compose stack collects them: the postgres-exporter program
//! (Debian's `prometheus-postgres-exporter` package, installed by `.ci/run`; the compose file
//! runs the official image of the same program) logs in to the test database as the
//! least-privilege `postgres_exporter` role with the shipped custom queries
//! (`grafana/postgres-exporter/queries.yml`), and a real Prometheus scrapes it.
//!
//! Why its own module: the Database row of the Pipeline dashboard is only worth something if
//! every metric it queries is one the exporter really exports, and if a lock wait, a long
//! transaction and dead rows really show on it. The dashboard test (`dashboards.rs`) runs the
//! same exporter beside the services.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use stack_tests::{free_port, workspace_root, ChildGuard, TestDatabase};

use crate::dashboards::{
    capture, collect_queries, expand_promql, has_finite_sample, metric_names, Prometheus,
};
use crate::helpers::*;

/// Debian's name for the exporter's program (the official image calls it postgres_exporter).
const EXPORTER: &str = "prometheus-postgres-exporter";

/// The shipped custom queries, mounted into the compose service.
fn shipped_queries() -> PathBuf {
    workspace_root().join("grafana/postgres-exporter/queries.yml")
}

/// A running exporter for one test database, killed when dropped.
pub struct PostgresExporter {
    _guard: ChildGuard,
    /// Where it serves `/metrics` on 127.0.0.1.
    pub port: u16,
}

impl PostgresExporter {
    /// Starts it as the compose service does (the same `DATA_SOURCE_*` variables and flags),
    /// pointed at `db` as `postgres_exporter`, and waits until its first scrape has reached the
    /// database and run every custom query.
    pub fn spawn(db: &TestDatabase) -> PostgresExporter {
        let url = role_url(db, "postgres_exporter");
        let uri = url.strip_prefix("postgres://postgres_exporter@").unwrap();
        let port = free_port();
        let mut child = match Command::new(EXPORTER)
            .arg(format!(
                "--extend.query-path={}",
                shipped_queries().display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .env("DATA_SOURCE_URI", format!("{uri}?sslmode=disable"))
            .env("DATA_SOURCE_USER", "postgres_exporter")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start {EXPORTER} ({e}); install it: apt-get install -y \
                 prometheus-postgres-exporter (.ci/run does this)"
            ),
        };
        let logs = capture(
            "postgres-exporter",
            vec![
                Box::new(child.stdout.take().unwrap()),
                Box::new(child.stderr.take().unwrap()),
            ],
        );
        let exporter = PostgresExporter {
            _guard: ChildGuard::new(child),
            port,
        };
        exporter.wait_until_it_reads_the_database(&logs);
        exporter
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics").1
    }

    /// Waits until a scrape says `pg_up 1` and carries a metric of every custom query.
    fn wait_until_it_reads_the_database(&self, logs: &Arc<Mutex<Vec<String>>>) {
        let queries = std::fs::read_to_string(shipped_queries()).unwrap();
        let prefixes: Vec<&str> = queries
            .lines()
            .filter(|l| l.starts_with("pg_") && l.ends_with(':'))
            .map(|l| l.trim_end_matches(':'))
            .collect();
        assert!(prefixes.len() >= 3, "no custom queries found: {prefixes:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut metrics = String::new();
        while Instant::now() < deadline {
            metrics = std::net::TcpStream::connect(("127.0.0.1", self.port))
                .map(|_| self.metrics())
                .unwrap_or_default();
            let read = |p: &&str| metrics.lines().any(|l| l.starts_with(&format!("{p}_")));
            if metrics.lines().any(|l| l == "pg_up 1") && prefixes.iter().all(read) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{EXPORTER} did not read the database with every custom query {prefixes:?}:\n\
             {metrics}\nlogs: {:#?}",
            logs.lock().unwrap()
        );
    }
}

/// The PromQL of the Pipeline dashboard's Database row: every panel after the row titled
/// "Database", up to the next row.
fn database_row_queries() -> Vec<(String, String)> {
    let path = workspace_root().join("grafana/dashboards/pipeline.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let start = panels
        .iter()
        .position(|p| p["type"] == "row" && p["title"] == "Database")
        .expect("the Pipeline dashboard has no row titled Database");
    let row: Vec<Value> = panels[start + 1..]
        .iter()
        .take_while(|p| p["type"] != "row")
        .cloned()
        .collect();
    let (mut promql, mut sql) = (Vec::new(), Vec::new());
    collect_queries(&serde_json::json!({ "panels": row }), &mut promql, &mut sql);
    assert!(sql.is_empty(), "the Database row queries SQL: {sql:?}");
    promql
}

/// The value of an instant query's first series, if it has one.
fn first_value(prometheus: &Prometheus, promql: &str) -> Option<f64> {
    let (_, body) = prometheus.query(promql);
    let json: Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_database_row_query_returns_data_from_the_real_exporter_and_shows_a_lock_wait() {
    // Arrange: a transaction that holds a row lock (and, by its snapshot, keeps autovacuum
    // from removing the rows deleted after it began), dead rows in events, and a second
    // session waiting for the lock.
    let db = TestDatabase::create().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "INSERT INTO events (event_id, user_id, product_id, event_type, price, event_timestamp)
             SELECT gen_random_uuid(), 1 + i % 50, 1 + i % 7, 'purchase', 9.99, now()
             FROM generate_series(1, 2000) AS i",
        )
        .await
        .unwrap();
    let holder = db.client().await;
    holder
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ;
             SELECT * FROM events WHERE user_id = 20 FOR UPDATE",
        )
        .await
        .unwrap();
    admin
        .batch_execute("DELETE FROM events WHERE user_id <= 10")
        .await
        .unwrap();
    let waiter = db.client().await;
    let blocked = tokio::spawn(async move {
        waiter
            .batch_execute("SELECT * FROM events WHERE user_id = 20 FOR UPDATE")
            .await
    });
    wait_until_a_session_waits_for_a_lock(&admin, String::new).await;
    let exporter = PostgresExporter::spawn(&db);
    let prometheus = Prometheus::spawn(&[("postgres", exporter.port)]);
    prometheus.wait_for_targets(1, 0, Duration::from_secs(30));
    let queries = database_row_queries();
    assert!(
        queries.len() >= 10,
        "too few Database row queries: {queries:#?}"
    );

    // Assert: every metric the row names is one the exporter exports ...
    let exposition = exporter.metrics();
    for (panel, expr) in &queries {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "panel {panel:?} names no pg_ metric: {expr}"
        );
        for metric in names {
            assert!(
                exposition.lines().any(|l| l
                    .strip_prefix(metric.as_str())
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))),
                "panel {panel:?} queries {metric}, which {EXPORTER} does not export:\n{exposition}"
            );
        }
    }
    // ... every query returns a finite value, and the row shows what the test arranged: the
    // lock wait, the open transaction, the dead rows (statistics arrive within seconds).
    let shows_the_arranged_state = || {
        let waiting = first_value(&prometheus, "max(pg_lock_waits_sessions)");
        let longest = first_value(&prometheus, "max(pg_stat_activity_max_tx_duration)");
        let dead = first_value(&prometheus, "max(pg_table_dead_tuples{relname=\"events\"})");
        let wal = first_value(&prometheus, "pg_wal_insert_position_bytes");
        let ok = waiting == Some(1.0)
            && longest.is_some_and(|s| s > 0.0)
            && dead.is_some_and(|d| d > 0.0)
            && wal.is_some_and(|w| w > 0.0);
        (
            ok,
            format!("waiting {waiting:?}, longest {longest:?}, dead {dead:?}, wal {wal:?}"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let empty: Vec<String> = queries
            .iter()
            .map(|(panel, expr)| (panel, expand_promql(expr)))
            .filter_map(|(panel, query)| {
                let (_, body) = prometheus.query(&query);
                let json: Value = serde_json::from_str(&body).unwrap();
                let finite = has_finite_sample(&json["data"]["result"]);
                (!finite).then(|| format!("{panel}: {query} -> {body}"))
            })
            .collect();
        let (shown, state) = shows_the_arranged_state();
        if empty.is_empty() && shown {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queries without a finite sample: {empty:#?}; arranged state shown: {state}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The lock wait ends with the holder's transaction.
    holder.batch_execute("ROLLBACK").await.unwrap();
    blocked.await.unwrap().unwrap();
}
