//! The Kafka source (`INGESTOR_SOURCE=kafka`) against librdkafka's in-process mock cluster
//! (`rdkafka::mocking::MockCluster`: real Kafka protocol over TCP, so a child ingestor process
//! reaches it too) and the real PostgreSQL: exactly once under duplicates, invalid messages,
//! kill -9, consumers taking over, rebalances, replays and broker faults, with every message
//! accounted for in the ledger (`ingest_files` + `log_ranges`) and the stored offsets.
//!
//! The events are the real generator's (its files' data lines, one message each), so what the
//! table must hold is what the contract's own reading of those files says (`helpers::expected`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use stack_tests::TestDatabase;

use crate::app::spawn_app;
use crate::helpers::*;

const TOPIC: &str = "events";
/// Bound on loading a test's messages (debug builds, a busy machine).
const LOAD_TIMEOUT: Duration = Duration::from_secs(180);

pub(crate) type Mock = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster of one broker with the topic `events` of `partitions` partitions.
pub(crate) fn cluster(partitions: i32) -> Mock {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, partitions, 1).unwrap();
    mock
}

/// The generator's events as message payloads (each file's data lines), with what the table
/// must hold once they are loaded.
pub(crate) fn events(files: u64, rows: u64, seed: u64, faults: Faults) -> (Vec<Vec<u8>>, Expected) {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), files, rows, seed, faults);
    let paths = event_files(dir.path());
    let expected = expected(&paths);
    let mut lines = Vec::new();
    for path in &paths {
        // Bytes: some invalid rows are not UTF-8, which a message may hold as well as a file.
        let bytes = std::fs::read(path).unwrap();
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        lines.extend(body.split(|b| *b == b'\n').skip(1).map(<[u8]>::to_vec));
    }
    assert_eq!(
        lines.len() as u64,
        expected.lines,
        "one record per line in the generated files, so one message per record"
    );
    (lines, expected)
}

/// Produces `lines` to `events`, message `i` to partition `i % partitions`, as one burst;
/// returns how many went to each partition.
pub(crate) fn produce(mock: &Mock, lines: &[Vec<u8>], partitions: i32) -> BTreeMap<i32, i64> {
    send(&mock.bootstrap_servers(), lines, partitions, 0, Pace::Burst)
}

/// How [`send`] produces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// As fast as the client takes them.
    Burst,
    /// A steady stream of about 10k messages/s, so that rebalances happen mid-stream.
    Stream,
}

/// Produces `lines` to `events` on the cluster at `bootstrap`, message `i` to partition
/// `(i + shift) % partitions`; returns how many went to each partition.
fn send(
    bootstrap: &str,
    lines: &[Vec<u8>],
    partitions: i32,
    shift: i32,
    pace: Pace,
) -> BTreeMap<i32, i64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("queue.buffering.max.messages", "1000000")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut counts = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let partition = (i as i32 + shift) % partitions;
        let mut record = BaseRecord::<(), [u8]>::to(TOPIC)
            .payload(line.as_slice())
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    producer.poll(Duration::from_millis(10));
                    record = returned;
                }
            }
        }
        *counts.entry(partition).or_insert(0) += 1;
        if pace == Pace::Stream && i % 200 == 199 {
            producer.poll(Duration::ZERO);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    counts
}

/// The ingestor's settings for the mock cluster: fast group protocol timers (the mock accepts
/// them), small batches so that several ranges per partition are in the ledger.
pub(crate) fn kafka_envs(
    mock: &Mock,
    extra: &[(&'static str, &'static str)],
) -> Vec<(String, String)> {
    let mut envs = vec![
        ("INGESTOR_SOURCE".to_owned(), "kafka".to_owned()),
        ("INGESTOR_KAFKA_BROKERS".to_owned(), mock.bootstrap_servers()),
        ("INGESTOR_KAFKA_TOPICS".to_owned(), TOPIC.to_owned()),
        ("INGESTOR_KAFKA_BATCH_MAX_MESSAGES".to_owned(), "2000".to_owned()),
        (
            "INGESTOR_KAFKA_CLIENT_OPTIONS".to_owned(),
            "session.timeout.ms=6000;heartbeat.interval.ms=500;topic.metadata.refresh.interval.ms=1000"
                .to_owned(),
        ),
    ];
    envs.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    envs
}

pub(crate) fn borrowed(envs: &[(String, String)]) -> Vec<(&str, &str)> {
    envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Waits until the stored offsets reach the end of every partition.
async fn wait_for_offsets(
    client: &tokio_postgres::Client,
    counts: &BTreeMap<i32, i64>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let stored = stored_offsets(client).await;
        if &stored == counts {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stored offsets {stored:?} never reached the partitions' ends {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored_offsets(client: &tokio_postgres::Client) -> BTreeMap<i32, i64> {
    client
        .query(
            "SELECT partition, next_offset FROM source_offsets WHERE topic = $1",
            &[&TOPIC],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Exactly once, every message accounted for: the table holds the valid unique ids; each
/// partition's ledger ranges tile `0..count` with neither gap nor overlap (no range loaded
/// twice, none skipped); the ranges' line counts add up to every message, the rejected ones
/// each in `rejected_rows` at an offset of its range.
async fn assert_exactly_once(
    client: &tokio_postgres::Client,
    expected: &Expected,
    counts: &BTreeMap<i32, i64>,
) {
    let stored = stored_event_ids(client).await;
    assert_eq!(
        (
            expected.unique_ids.difference(&stored).count(),
            stored.difference(&expected.unique_ids).count()
        ),
        (0, 0),
        "events differ from the valid unique events produced"
    );
    let ranges = client
        .query(
            "SELECT r.partition, r.first_offset, r.next_offset, f.status, f.lines, f.accepted, \
             f.duplicates, f.rejected FROM log_ranges r JOIN ingest_files f USING (file_id) \
             WHERE r.topic = $1 ORDER BY r.partition, r.first_offset",
            &[&TOPIC],
        )
        .await
        .unwrap();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut lines, mut accepted, mut rejected) = (0i64, 0i64, 0i64);
    for row in &ranges {
        let (partition, first, next): (i32, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let status: String = row.get(3);
        assert_eq!(status, "loaded", "range {partition}@{first}..{next}");
        let end = ends.entry(partition).or_insert(0);
        assert_eq!(
            first, *end,
            "partition {partition}: a range starts at {first}, the previous ended at {end}"
        );
        *end = next;
        let (l, a, d, r): (i64, i64, i64, i64) = (row.get(4), row.get(5), row.get(6), row.get(7));
        assert_eq!(
            l,
            next - first,
            "every message of {partition}@{first} counted"
        );
        assert_eq!(l, a + d + r);
        (lines, accepted, rejected) = (lines + l, accepted + a, rejected + r);
    }
    assert_eq!(&ends, counts, "the ranges end where the partitions end");
    assert_eq!(&stored_offsets(client).await, counts);
    assert_eq!(lines as u64, expected.lines, "every message accounted for");
    assert_eq!(accepted as usize, expected.unique_ids.len());
    assert_eq!(rejected as u64, expected.rejected);
    let misplaced: i64 = client
        .query_one(
            "SELECT count(*) FROM rejected_rows j JOIN log_ranges r USING (file_id) \
             WHERE j.line_number < r.first_offset OR j.line_number >= r.next_offset",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rejected_rows: i64 = client
        .query_one("SELECT count(*) FROM rejected_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((rejected_rows as u64, misplaced), (expected.rejected, 0));
    let loading: i64 = client
        .query_one(
            "SELECT count(*) FROM ingest_files WHERE status <> 'loaded'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(loading, 0, "no entry left loading or failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_messages_with_duplicates_and_invalid_ones_load_exactly_once() {
    // Arrange: 100k events, 2% duplicates, 0.5% invalid, over 6 partitions.
    let db = TestDatabase::create().await;
    let (lines, expected) = events(
        10,
        10_000,
        141,
        Faults {
            invalid: 0.005,
            duplicate: 0.02,
            late: 0.01,
        },
    );
    let mock = cluster(6);
    let counts = produce(&mock, &lines, 6);
    let input = tempfile::tempdir().unwrap();
    let envs = kafka_envs(&mock, &[]);

    // Act
    let app = spawn_app(&ingestor_url(&db), input.path(), &borrowed(&envs)).await;
    let client = db.client().await;
    wait_for_offsets(&client, &counts, LOAD_TIMEOUT).await;

    // Assert
    assert_exactly_once(&client, &expected, &counts).await;
    let (code, status) = app.get("/status");
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let partitions = status["kafka_partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 6, "{status}");
    assert_eq!(partitions[0]["next_offset"], counts[&0]);
    let (_, metrics) = app.get("/metrics");
    for series in [
        "ingestor_kafka_batches_total{outcome=\"loaded\"}",
        "ingestor_kafka_messages_received_total",
        "ingestor_kafka_produce_to_commit_seconds_count",
        "ingestor_kafka_assigned_partitions 6",
        "ingestor_kafka_consumer_lag_messages{partition=\"0\",topic=\"events\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    app.stop().await.unwrap();
}

/// Kills the ingestor with SIGKILL while one of its transactions has written (between COPY and
/// COMMIT) and at random moments, 12 times in all, restarting it each time; one run then
/// finishes. The stored offsets are the only memory a new process has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_between_copy_and_commit_and_at_random_moments_loses_and_doubles_nothing() {
    // Arrange
    let db = TestDatabase::create().await;
    let (lines, expected) = events(
        12,
        10_000,
        142,
        Faults {
            invalid: 0.005,
            duplicate: 0.02,
            late: 0.0,
        },
    );
    let mock = cluster(4);
    let counts = produce(&mock, &lines, 4);
    let input = tempfile::tempdir().unwrap();
    let envs = kafka_envs(&mock, &[("INGESTOR_KAFKA_BATCH_MAX_MESSAGES", "500")]);
    let url = ingestor_url(&db);
    let client = db.client().await;
    let seed: u64 = rand::rng().random();
    eprintln!("kafka kill test seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    // Act
    for round in 1..=12 {
        let ingestor = Ingestor::spawn(&url, input.path(), &borrowed(&envs));
        // The group gives it the partitions once the killed member's session has timed out.
        assert!(
            wait_for_metric_above_zero(
                &ingestor,
                "ingestor_kafka_assigned_partitions",
                LOAD_TIMEOUT
            ),
            "round {round}: no partitions assigned"
        );
        if round % 2 == 1 {
            wait_for_a_written_transaction(&client, &db.name).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..=300))).await;
        }
        ingestor.kill();
        eprintln!("round {round}: offsets {:?}", stored_offsets(&client).await);
    }
    assert_ne!(
        stored_offsets(&client).await,
        counts,
        "everything loaded before the last kill; the kills hit no work"
    );
    let survivor = Ingestor::spawn(&url, input.path(), &borrowed(&envs));
    wait_for_offsets(&client, &counts, LOAD_TIMEOUT).await;

    // Assert
    assert_exactly_once(&client, &expected, &counts).await;
    assert!(survivor.terminate(Duration::from_secs(20)).success());
}

/// Waits until an ingestor session's transaction holds a transaction id: it has written rows
/// (COPY) and not committed yet.
async fn wait_for_a_written_transaction(client: &tokio_postgres::Client, database: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let writing: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND application_name = 'ingestor' AND backend_xid IS NOT NULL",
                &[&database],
            )
            .await
            .unwrap()
            .get(0);
        if writing > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no transaction wrote within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Two consumers share the partitions; one dies holding its share (SIGKILL: no revocation, no
/// goodbye to the group); the other takes the partitions over when the group notices and loads
/// from the stored offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_dies_holding_partitions_is_taken_over_exactly_once() {
    // Arrange
    let db = TestDatabase::create().await;
    let (lines, expected) = events(6, 10_000, 143, Faults::default());
    let mock = cluster(4);
    let (first, rest) = lines.split_at(lines.len() / 3);
    let mut counts = produce(&mock, first, 4);
    let input = tempfile::tempdir().unwrap();
    let envs = kafka_envs(&mock, &[("INGESTOR_KAFKA_BATCH_MAX_MESSAGES", "500")]);
    let url = ingestor_url(&db);
    let client = db.client().await;
    let doomed = Ingestor::spawn(&url, input.path(), &borrowed(&envs));
    let survivor = Ingestor::spawn(&url, input.path(), &borrowed(&envs));
    wait_for_offsets(&client, &counts, LOAD_TIMEOUT).await;
    assert!(
        wait_for_metric(
            &doomed,
            "ingestor_kafka_assigned_partitions 2",
            Duration::from_secs(30)
        ),
        "the two consumers never shared the partitions"
    );

    // Act: the rest arrives while one consumer is killed holding half the partitions.
    let producing = {
        let rest = rest.to_vec();
        let bootstrap = mock.bootstrap_servers();
        std::thread::spawn(move || produce_to(&bootstrap, &rest, 4, 3))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.kill();
    let more = producing.join().unwrap();
    for (partition, n) in more {
        *counts.entry(partition).or_insert(0) += n;
    }
    wait_for_offsets(&client, &counts, LOAD_TIMEOUT).await;

    // Assert
    assert_exactly_once(&client, &expected, &counts).await;
    assert!(survivor
        .get("/metrics")
        .1
        .contains("ingestor_kafka_assigned_partitions 4"));
}

/// Produces `lines` to `events` on the cluster at `bootstrap` as a steady stream (about 10k
/// messages/s), message `i` to partition `(i + shift) % partitions`; the tests run it on a
/// thread of their own while the ingestors load.
fn produce_to(
    bootstrap: &str,
    lines: &[Vec<u8>],
    partitions: i32,
    shift: i32,
) -> BTreeMap<i32, i64> {
    send(bootstrap, lines, partitions, shift, Pace::Stream)
}

/// What the streaming tests start from: a fresh database, `files` x 10,000 of the generator's
/// events (0.5% invalid rows, 2% duplicates) as messages, and a mock cluster of six partitions
/// with the ingestor's environment for it, ranges of at most `batch_max_messages`.
struct FaultyStream {
    db: TestDatabase,
    lines: Vec<Vec<u8>>,
    expected: Expected,
    mock: Mock,
    input: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl FaultyStream {
    async fn new(files: u64, seed: u64, batch_max_messages: &'static str) -> Self {
        let db = TestDatabase::create().await;
        let faults = Faults {
            invalid: 0.005,
            duplicate: 0.02,
            late: 0.0,
        };
        let (lines, expected) = events(files, 10_000, seed, faults);
        let mock = cluster(6);
        let envs = kafka_envs(
            &mock,
            &[("INGESTOR_KAFKA_BATCH_MAX_MESSAGES", batch_max_messages)],
        );
        FaultyStream {
            db,
            lines,
            expected,
            mock,
            input: tempfile::tempdir().unwrap(),
            envs,
        }
    }
}

/// Waits until the unlabelled gauge `name` is above zero.
fn wait_for_metric_above_zero(ingestor: &Ingestor, name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let above = ingestor.get("/metrics").1.lines().any(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
                .is_some_and(|value| value > 0.0)
        });
        if above {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn wait_for_metric(ingestor: &Ingestor, series: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ingestor.get("/metrics").1.contains(series) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Three consumers join one after the other and leave again while messages stream in: each
/// join and leave moves partitions mid-batch (cooperative rebalancing); every range is loaded
/// once and the partitions' ranges tile their offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_joining_and_leaving_mid_stream_load_every_range_once() {
    // Arrange
    let stream = FaultyStream::new(8, 144, "300").await;
    let (url, input, lines) = (ingestor_url(&stream.db), stream.input.path(), stream.lines);
    let client = stream.db.client().await;
    // The second half of the stream starts once the third consumer has joined, so that every
    // consumer has messages to load while it is a member, however slowly a busy machine
    // starts them.
    let (third_joined, wait_for_third) = std::sync::mpsc::channel::<()>();
    let producing = {
        let bootstrap = stream.mock.bootstrap_servers();
        std::thread::spawn(move || {
            let (first, rest) = lines.split_at(lines.len() / 2);
            let mut counts = produce_to(&bootstrap, first, 6, 0);
            wait_for_third.recv().unwrap();
            let shift = (first.len() % 6) as i32;
            for (partition, n) in produce_to(&bootstrap, rest, 6, shift) {
                *counts.entry(partition).or_insert(0) += n;
            }
            counts
        })
    };

    // Act
    // In one process, so each names itself (the default is host and pid).
    let consumer = |name: &'static str| {
        let mut envs = stream.envs.clone();
        envs.push(("INGESTOR_INSTANCE_ID".to_owned(), name.to_owned()));
        envs
    };
    let a = spawn_app(&url, input, &borrowed(&consumer("a"))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = spawn_app(&url, input, &borrowed(&consumer("b"))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = spawn_app(&url, input, &borrowed(&consumer("c"))).await;
    third_joined.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.stop().await.unwrap();
    let counts = producing.join().unwrap();
    wait_for_offsets(&client, &counts, LOAD_TIMEOUT).await;

    // Assert
    assert_exactly_once(&client, &stream.expected, &counts).await;
    let shares: BTreeMap<String, i64> = client
        .query(
            "SELECT claimed_by, count(*) FROM ingest_files GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        shares.len(),
        3,
        "each consumer loaded ranges while the stream ran: {shares:?}"
    );
    c.stop().await.unwrap();
}

/// The stored offsets moved back to 0 (an operator replaying the topic, while the ingestor
/// runs): the messages are read again, nothing is stored twice, and every replayed valid
/// message counts as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_offset_range_stores_nothing_twice_and_counts_duplicates() {
    // Arrange
    let db = TestDatabase::create().await;
    let (lines, expected) = events(
        2,
        5_000,
        145,
        Faults {
            invalid: 0.005,
            duplicate: 0.02,
            late: 0.0,
        },
    );
    let mock = cluster(3);
    let counts = produce(&mock, &lines, 3);
    let input = tempfile::tempdir().unwrap();
    let envs = kafka_envs(&mock, &[]);
    let app = spawn_app(&ingestor_url(&db), input.path(), &borrowed(&envs)).await;
    let client = db.client().await;
    wait_for_offsets(&client, &counts, LOAD_TIMEOUT).await;
    assert_exactly_once(&client, &expected, &counts).await;
    let events_before = stored_event_ids(&client).await;

    // Act
    client
        .execute("UPDATE source_offsets SET next_offset = 0", &[])
        .await
        .unwrap();
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let replayed = loop {
        let row = client
            .query_one(
                "SELECT coalesce(sum(lines), 0)::bigint, coalesce(sum(accepted), 0)::bigint, \
                 coalesce(sum(duplicates), 0)::bigint, coalesce(sum(rejected), 0)::bigint \
                 FROM ingest_files",
                &[],
            )
            .await
            .unwrap();
        let totals: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        if totals.0 as u64 == 2 * expected.lines && stored_offsets(&client).await == counts {
            break totals;
        }
        assert!(
            Instant::now() < deadline,
            "the replay did not finish: {totals:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Assert
    assert_eq!(
        stored_event_ids(&client).await,
        events_before,
        "nothing stored twice"
    );
    let valid = expected.lines - expected.rejected;
    let (_, accepted, duplicates, rejected) = replayed;
    assert_eq!(
        accepted as usize,
        expected.unique_ids.len(),
        "the replay accepted nothing new"
    );
    assert_eq!(
        duplicates as u64,
        (valid - expected.unique_ids.len() as u64) + valid,
        "the first pass's duplicates plus every replayed valid message"
    );
    assert_eq!(rejected as u64, 2 * expected.rejected);
    app.stop().await.unwrap();
}

/// Broker faults from the mock: failing fetch requests, then the broker down. Readiness says
/// why while the cluster is out of reach and recovers without a restart once it answers;
/// nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_and_a_broker_down_drop_readiness_which_recovers_with_nothing_lost() {
    // Arrange
    let db = TestDatabase::create().await;
    let (lines, expected) = events(
        4,
        5_000,
        146,
        Faults {
            invalid: 0.005,
            duplicate: 0.02,
            late: 0.0,
        },
    );
    let (first, rest) = lines.split_at(lines.len() / 2);
    let mock = cluster(3);
    let mut counts = produce(&mock, first, 3);
    let input = tempfile::tempdir().unwrap();
    let envs = kafka_envs(&mock, &[]);
    let app = spawn_app(&ingestor_url(&db), input.path(), &borrowed(&envs)).await;
    let client = db.client().await;
    wait_for_offsets(&client, &counts, LOAD_TIMEOUT).await;
    assert_eq!(app.get("/readyz").0, 200);

    // Act 1: fetch requests fail for a while.
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 20],
    );
    // Act 2: the broker goes down.
    mock.broker_down(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let reason = loop {
        let (code, body) = app.get("/readyz");
        if code == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "readiness never dropped: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.contains("Kafka cluster unreachable"), "{reason}");
    mock.broker_up(1).unwrap();
    let more = produce(&mock, rest, 3);
    for (partition, n) in more {
        *counts.entry(partition).or_insert(0) += n;
    }

    // Assert
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.get("/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "readiness never came back: {}",
            app.get("/readyz").1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_offsets(&client, &counts, LOAD_TIMEOUT).await;
    assert_exactly_once(&client, &expected, &counts).await;
    app.stop().await.unwrap();
}

/// A bad Kafka setting stops start-up with a message naming the key and the value.
#[test]
fn bad_kafka_settings_stop_start_up_naming_the_key_and_the_value() {
    for (key, value, says) in [
        ("INGESTOR_KAFKA_TOPICS", "events:xml", "kafka_topics"),
        ("INGESTOR_KAFKA_TOPICS", "bad topic", "kafka_topics"),
        (
            "INGESTOR_KAFKA_CLIENT_OPTIONS",
            "group.id=other",
            "kafka_client_options",
        ),
        (
            "INGESTOR_KAFKA_CLIENT_OPTIONS",
            "novalue",
            "kafka_client_options",
        ),
        ("INGESTOR_KAFKA_FORMAT", "xml", "kafka_format"),
    ] {
        let output = ingestor_run_command("postgres://nobody@127.0.0.1:1/none", Path::new("."))
            .env("INGESTOR_SOURCE", "kafka")
            .env(key, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{key}={value} started");
        let stderr_lower = stderr.to_lowercase();
        assert!(
            stderr_lower.contains(says) && stderr.contains(value.split('=').next().unwrap()),
            "{key}={value}: {stderr}"
        );
    }
}

/// The real generator's Kafka sink (idempotent producer, keyed by user, JSON messages) into
/// the real ingestor's Kafka source: the ledger's totals are exactly the generator's summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generators_json_messages_are_accounted_for_exactly_as_the_generator_counted_them() {
    // Arrange
    let db = TestDatabase::create().await;
    let mock = cluster(4);
    let produced: generator::summary::RowCounts = {
        let settings = generator::config::RawSettings {
            sink: generator::config::SinkKind::Kafka,
            kafka_brokers: Some(mock.bootstrap_servers()),
            kafka_topic: TOPIC.to_owned(),
            kafka_format: generator::config::KafkaFormat::Json,
            rate: 10_000_000.0,
            rows: 5_000,
            files: 4,
            seed: Some(147),
            invalid_ratio: 0.01,
            duplicate_ratio: 0.02,
            late_ratio: 0.01,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::task::spawn_blocking(move || generator::startup::generate(&settings, &cancel))
            .await
            .unwrap()
            .unwrap()
            .published
    };
    let input = tempfile::tempdir().unwrap();
    let envs = kafka_envs(&mock, &[("INGESTOR_KAFKA_FORMAT", "json")]);

    // Act
    let app = spawn_app(&ingestor_url(&db), input.path(), &borrowed(&envs)).await;
    let client = db.client().await;
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let totals = loop {
        let row = client
            .query_one(
                "SELECT coalesce(sum(lines), 0)::bigint, coalesce(sum(accepted), 0)::bigint, \
                 coalesce(sum(duplicates), 0)::bigint, coalesce(sum(rejected), 0)::bigint \
                 FROM ingest_files WHERE status = 'loaded'",
                &[],
            )
            .await
            .unwrap();
        let totals: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        if totals.0 as u64 >= produced.rows {
            break totals;
        }
        assert!(
            Instant::now() < deadline,
            "not loaded: {totals:?} of {produced:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Assert
    let (lines, accepted, duplicates, rejected) = totals;
    assert_eq!(
        (
            lines as u64,
            accepted as u64,
            duplicates as u64,
            rejected as u64
        ),
        (
            produced.rows,
            produced.valid,
            produced.duplicates,
            produced.invalid
        ),
        "ledger totals against the generator's summary"
    );
    let offsets: i64 = stored_offsets(&client).await.values().sum();
    assert_eq!(
        offsets as u64, produced.rows,
        "every message's offset passed"
    );
    let reasons: BTreeMap<String, u64> = client
        .query("SELECT reason, count(*) FROM rejected_rows GROUP BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    let injected: BTreeMap<String, u64> = produced
        .invalid_by_reason
        .iter()
        .map(|(reason, n)| ((*reason).to_owned(), *n))
        .collect();
    assert_eq!(
        reasons, injected,
        "each injected fault rejected for its own reason"
    );
    app.stop().await.unwrap();
}

/// A live stream (about 10,000 messages/s) into two loaders: ranges of a partition are often
/// taken from a list read before the previous range committed, and such a stale range's claim
/// finds the stored offset moved on. That must change nothing; an earlier version cleared the
/// partition's buffer then, and messages fetched before its seek started the buffer past the
/// position, so a range claimed offsets whose messages it did not hold (the benchmark's 10k/s
/// run found 596 of 100,000 messages missing from the ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_into_two_loaders_accounts_for_every_offset_of_every_range() {
    // Arrange
    let stream = FaultyStream::new(6, 149, "10000").await;
    let url = ingestor_url(&stream.db);
    let app = spawn_app(&url, stream.input.path(), &borrowed(&stream.envs)).await;
    let client = stream.db.client().await;

    // Act
    let counts = {
        let (bootstrap, lines) = (stream.mock.bootstrap_servers(), stream.lines);
        std::thread::spawn(move || produce_to(&bootstrap, &lines, 6, 0))
            .join()
            .unwrap()
    };
    wait_for_offsets(&client, &counts, LOAD_TIMEOUT).await;

    // Assert
    assert_exactly_once(&client, &stream.expected, &counts).await;
    app.stop().await.unwrap();
}
