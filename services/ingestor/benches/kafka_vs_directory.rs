//! The Kafka source against the directory source on the same events, in the same run
//! (issue 14's benchmark): `cargo bench -p ingestor --bench kafka_vs_directory`.
//!
//! 0. The mock cluster's own ceiling: how fast a bare consumer receives the backlog.
//! 1. Throughput: the same generated events (files for the directory source; one message per
//!    data line, over 6 partitions of librdkafka's in-process mock cluster, for the Kafka
//!    source), loaded from a standing backlog into a fresh database each, by the ingestor built
//!    in this process (release profile), alternating which source goes first. The rate is taken
//!    from the first claim to the last commit (the ledger's times): joining the consumer group
//!    takes about 3 s with the mock cluster, which is start-up, not loading; the rate from the
//!    start is printed too. Reported per repetition and as the median ratio Kafka / directory.
//! 2. Latency: messages produced at a steady 10,000 per second for 10 s while the ingestor runs
//!    (consumers with `fetch.wait.max.ms=10`), beside a bare consumer's produce -> receive;
//!    the p99 of produce -> COMMIT, from `ingestor_kafka_produce_to_commit_seconds` (a histogram:
//!    interpolated within a bucket, as Prometheus's `histogram_quantile` does) and, as an upper
//!    bound, from the ledger (each range's `committed_at - landed_at`, its oldest message's
//!    wait, weighted by its lines).
//!
//! Environment: `TEST_DATABASE_URL` (an admin connection, as for the tests); `BENCH_EVENTS`
//! (default 200000) and `BENCH_REPS` (default 3).
//!
//! Why a bench target and not `scripts/bench`: the mock cluster exists only inside a process
//! linking librdkafka, so the producer, the broker and the ingestor share this one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use ingestor::startup::Application;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use stack_tests::TestDatabase;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "events";
const PARTITIONS: i32 = 6;

type Mock = MockCluster<'static, DefaultProducerContext>;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let events: u64 = env_number("BENCH_EVENTS", 200_000);
    let reps: u64 = env_number("BENCH_REPS", 3);
    let files = (events / 10_000).max(1);
    let source_dir = tempfile::tempdir().unwrap();
    generate(source_dir.path(), files, events / files);
    let lines = data_lines(source_dir.path());
    println!(
        "kafka_vs_directory: {} events in {files} files, {reps} repetitions",
        lines.len()
    );
    let ceiling = consume_only(&lines);
    println!(
        "the mock cluster's own ceiling: a bare consumer (no validation, no database) receives {ceiling:.0} messages/s"
    );
    let mut ratios = Vec::new();
    for rep in 1..=reps {
        let (directory, kafka) = if rep % 2 == 1 {
            let d = directory_run(source_dir.path(), lines.len()).await;
            (d, kafka_run(&lines).await)
        } else {
            let k = kafka_run(&lines).await;
            (directory_run(source_dir.path(), lines.len()).await, k)
        };
        let ratio = kafka / directory;
        ratios.push(ratio);
        println!(
            "rep {rep}: first claim to last commit: directory {directory:.0} events/s, kafka {kafka:.0} messages/s, kafka/directory {ratio:.2}"
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median kafka/directory: {:.2}", ratios[ratios.len() / 2]);
    if env_number("BENCH_LATENCY", 1) == 1 {
        latency_run(&lines).await;
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn generate(dir: &Path, files: u64, rows: u64) {
    let settings = generator::config::RawSettings {
        out: dir.to_owned(),
        rate: 10_000_000.0,
        rows,
        files,
        seed: Some(14),
        invalid_ratio: 0.005,
        duplicate_ratio: 0.01,
        ..Default::default()
    }
    .validate()
    .unwrap();
    generator::startup::generate(&settings, &CancellationToken::new()).unwrap();
}

/// Every file's data lines, as message payloads.
fn data_lines(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    paths.sort();
    let mut lines = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).unwrap();
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        lines.extend(body.split(|b| *b == b'\n').skip(1).map(<[u8]>::to_vec));
    }
    lines
}

/// An in-process ingestor on `db` with `settings` (JSON keys); stopped by the returned token;
/// its HTTP port.
async fn start(
    db: &TestDatabase,
    input: &Path,
    settings: serde_json::Value,
) -> (CancellationToken, u16) {
    let mut flags = serde_json::json!({
        "input_dir": input,
        "database_url": db.url,
        "listen": "127.0.0.1:0",
        "rescan_interval_ms": 100,
        "settle_ms": 100,
    });
    for (key, value) in settings.as_object().unwrap() {
        flags[key] = value.clone();
    }
    let settings = ingestor::config::load(None, &flags).unwrap();
    let app = Application::build(settings).await.unwrap();
    let port = app.port();
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    (stop, port)
}

/// Waits until `sql` (one bigint) reaches `target`.
async fn wait_for(client: &tokio_postgres::Client, sql: &str, target: i64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let value: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        if value >= target {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {value} of {target}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Lines per second from the first claim to the last commit: the loading itself, without the
/// start-up (for Kafka, joining the consumer group takes seconds with the mock cluster).
async fn steady_rate(client: &tokio_postgres::Client) -> f64 {
    let row = client
        .query_one(
            "SELECT sum(lines)::float8 / \
             extract(epoch FROM max(committed_at) - min(discovered_at))::float8 FROM ingest_files",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

const LINES_LOADED: &str =
    "SELECT coalesce(sum(lines), 0)::bigint FROM ingest_files WHERE status = 'loaded'";

/// Events per second of the directory source over a copy of the files.
async fn directory_run(files: &Path, lines: usize) -> f64 {
    let db = TestDatabase::create().await;
    let input = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(files).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, input.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let client = db.client().await;
    let started = Instant::now();
    let (stop, _) = start(&db, input.path(), serde_json::json!({})).await;
    wait_for(&client, LINES_LOADED, lines as i64).await;
    let elapsed = started.elapsed();
    stop.cancel();
    let steady = steady_rate(&client).await;
    println!(
        "  directory: {:.0} events/s from start, {steady:.0} from the first claim to the last commit",
        lines as f64 / elapsed.as_secs_f64()
    );
    steady
}

fn cluster() -> Mock {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    mock
}

fn producer(mock: &Mock) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("queue.buffering.max.messages", "2000000")
        .set("linger.ms", "1")
        .create()
        .unwrap()
}

fn send(producer: &BaseProducer, i: usize, line: &[u8]) {
    let mut record = BaseRecord::<(), [u8]>::to(TOPIC)
        .payload(line)
        .partition(i as i32 % PARTITIONS);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, returned)) => {
                producer.poll(Duration::from_millis(1));
                record = returned;
            }
        }
    }
}

/// The Kafka source's settings, plus `BENCH_KAFKA_SETTINGS` (a JSON object of settings) to
/// compare variants.
fn kafka_settings(mock: &Mock) -> serde_json::Value {
    let mut settings = serde_json::json!({
        "source": "kafka",
        "kafka_brokers": mock.bootstrap_servers(),
        "kafka_topics": TOPIC,
    });
    if let Ok(extra) = std::env::var("BENCH_KAFKA_SETTINGS") {
        let extra: serde_json::Value = serde_json::from_str(&extra).unwrap();
        for (key, value) in extra.as_object().unwrap() {
            settings[key] = value.clone();
        }
    }
    settings
}

/// Messages per second a bare librdkafka consumer receives from the mock cluster over a
/// standing backlog of `lines`: the ceiling any consumer of this broker has.
fn consume_only(lines: &[Vec<u8>]) -> f64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let mock = cluster();
    let producer = producer(&mock);
    for (i, line) in lines.iter().enumerate() {
        send(&producer, i, line);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "bench-ceiling")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = Instant::now();
    let mut received = 0;
    while received < lines.len() {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.unwrap();
            received += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{received} received"
        );
    }
    received as f64 / started.elapsed().as_secs_f64()
}

/// Messages per second of the Kafka source over a standing backlog of `lines`.
async fn kafka_run(lines: &[Vec<u8>]) -> f64 {
    let db = TestDatabase::create().await;
    let mock = cluster();
    let producer = producer(&mock);
    for (i, line) in lines.iter().enumerate() {
        send(&producer, i, line);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let input = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let started = Instant::now();
    let (stop, _) = start(&db, input.path(), kafka_settings(&mock)).await;
    wait_for(&client, LINES_LOADED, lines.len() as i64).await;
    let elapsed = started.elapsed();
    stop.cancel();
    let shape = client
        .query_one(
            "SELECT count(*), avg(lines)::float8, \
             extract(epoch FROM max(committed_at) - min(discovered_at))::float8, \
             extract(epoch FROM sum(committed_at - discovered_at))::float8 FROM ingest_files",
            &[],
        )
        .await
        .unwrap();
    let (ranges, mean, span, busy): (i64, f64, f64, f64) =
        (shape.get(0), shape.get(1), shape.get(2), shape.get(3));
    println!(
        "  kafka: {ranges} ranges of {mean:.0} messages on average; first claim to last commit \
         {span:.2} s of {:.2} s; ranges in a transaction {busy:.2} s in all",
        elapsed.as_secs_f64()
    );
    let steady = steady_rate(&client).await;
    println!(
        "  kafka: {:.0} messages/s from start (joining the group included), {steady:.0} from the first claim to the last commit",
        lines.len() as f64 / elapsed.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    steady
}

/// Produces `lines` at `rate` per second from a thread of its own to `bootstrap`.
fn produce_paced(
    bootstrap: String,
    payloads: Vec<Vec<u8>>,
    rate: usize,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let started = Instant::now();
        for (i, line) in payloads.iter().enumerate() {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            send(&producer, i, line);
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    })
}

/// The p99 of produce -> receive at `rate` for a bare consumer of the mock cluster: what the
/// broker and the client cost before the ingestor does anything.
fn bare_latency_p99(lines: &[Vec<u8>], rate: usize) -> f64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message as _;
    use rdkafka::{Offset, TopicPartitionList};
    let mock = cluster();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "bench-latency")
        .set("fetch.wait.max.ms", LATENCY_FETCH_WAIT_MS)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let producing = produce_paced(mock.bootstrap_servers(), lines.to_vec(), rate);
    let mut latencies = Vec::with_capacity(lines.len());
    let started = Instant::now();
    while latencies.len() < lines.len() && started.elapsed() < Duration::from_secs(120) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let produced = message.timestamp().to_millis().unwrap_or_default();
            let now = chrono::Utc::now().timestamp_millis();
            latencies.push((now - produced) as f64 / 1e3);
        }
    }
    producing.join().unwrap();
    latencies.sort_by(f64::total_cmp);
    latencies[latencies.len() * 99 / 100]
}

/// The consumers' `fetch.wait.max.ms` in the latency run: librdkafka's default (500 ms) is how
/// long the mock broker holds a fetch, which would dominate produce -> receive.
const LATENCY_FETCH_WAIT_MS: &str = "10";

/// p99 produce -> COMMIT at 10,000 messages per second for 10 s.
async fn latency_run(lines: &[Vec<u8>]) {
    const RATE: usize = 10_000;
    const SECONDS: usize = 10;
    let db = TestDatabase::create().await;
    let mock = cluster();
    let input = tempfile::tempdir().unwrap();
    let mut settings = kafka_settings(&mock);
    settings["kafka_client_options"] = format!("fetch.wait.max.ms={LATENCY_FETCH_WAIT_MS}").into();
    let (stop, port) = start(&db, input.path(), settings).await;
    let client = db.client().await;
    // Until the consumer holds its partitions (a first message committed).
    let producer = producer(&mock);
    send(&producer, 0, &lines[0]);
    producer.flush(Duration::from_secs(10)).unwrap();
    wait_for(&client, LINES_LOADED, 1).await;
    // The cooperative protocol may follow the first assignment with a second rebalance: let
    // the group settle before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    client
        .batch_execute("TRUNCATE log_ranges, ingest_files CASCADE")
        .await
        .unwrap();
    let total = (RATE * SECONDS).min(lines.len() - 1);
    let bare = bare_latency_p99(&lines[..total], RATE);
    println!(
        "  a bare consumer of the mock cluster at {RATE} messages/s: p99 produce->receive {:.1} ms",
        bare * 1e3
    );
    let paced = produce_paced(mock.bootstrap_servers(), lines[1..=total].to_vec(), RATE);
    paced.join().unwrap();
    // Every offset passed (the warm-up message's too), then every message in the ledger: a
    // benchmark that lost messages must not report a latency.
    wait_for(
        &client,
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM source_offsets",
        total as i64 + 1,
    )
    .await;
    let loaded: i64 = client.query_one(LINES_LOADED, &[]).await.unwrap().get(0);
    assert_eq!(loaded, total as i64, "messages missing from the ledger");
    let bounds = client
        .query_one(
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY latency), \
             percentile_disc(0.99) WITHIN GROUP (ORDER BY latency), max(latency) FROM ( \
               SELECT extract(epoch FROM committed_at - landed_at)::float8 AS latency \
               FROM ingest_files, generate_series(1, lines::int)) per_line",
            &[],
        )
        .await
        .unwrap();
    let (p50, upper, max): (f64, f64, f64) = (bounds.get(0), bounds.get(1), bounds.get(2));
    println!(
        "  ledger upper bounds (each range's oldest message): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p50 * 1e3,
        upper * 1e3,
        max * 1e3
    );
    let histogram = histogram_p99(&scrape(port), "ingestor_kafka_produce_to_commit_seconds", 1);
    stop.cancel();
    println!(
        "latency at {RATE} messages/s for {SECONDS} s ({total} messages): p99 produce->commit \
         {:.1} ms (histogram, interpolated), at most {:.1} ms (ledger upper bound)",
        histogram * 1e3,
        upper * 1e3
    );
}

/// `GET /metrics` of the app on `port`.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The 0.99 quantile of histogram `name` in a text exposition, minus the first `skip`
/// observations' worth (the warm-up message), interpolated linearly within its bucket as
/// Prometheus's `histogram_quantile` does.
fn histogram_p99(exposition: &str, name: &str, skip: u64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1) - skip as f64;
    let rank = 0.99 * total + skip as f64;
    let mut lower = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let share = (rank - lower.1) / (count - lower.1).max(1.0);
            return lower.0 + (le - lower.0) * share;
        }
        lower = (le, count);
    }
    f64::NAN
}
