//! The Kafka sink against librdkafka's in-process mock cluster (real Kafka protocol over TCP on
//! 127.0.0.1; no broker can run on the test machines): messages are read back with a real
//! consumer and held to the rows the seeded generator must have produced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use event_contract::{parse_record, HeaderLayout, ValidationContext, COLUMNS};
use generator::config::{KafkaFormat, RawSettings, Settings, SinkKind};
use generator::internal_events::Metrics;
use generator::rows::{Row, RowSource};
use generator::sink::message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

const GENERATOR: &str = env!("CARGO_BIN_EXE_generator");
const TOPIC: &str = "events";
const PARTITIONS: i32 = 4;
const SEED: u64 = 17;
const START: &str = "2026-01-01T00:00:00Z";

/// One message as a consumer reads it.
#[derive(Debug, Clone)]
struct Consumed {
    partition: i32,
    key: String,
    payload: Vec<u8>,
}

/// A three-broker mock cluster with the topic created (4 partitions).
fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    cluster
}

fn settings(brokers: &str, format: KafkaFormat, files: u64, rows: u64) -> RawSettings {
    RawSettings {
        sink: SinkKind::Kafka,
        kafka_brokers: Some(brokers.to_owned()),
        kafka_format: format,
        rate: 10_000_000.0,
        rows,
        files,
        seed: Some(SEED),
        start_time: Some(START.to_owned()),
        ..RawSettings::default()
    }
}

/// Runs the generator as a library, with a registry the test reads.
fn produce(settings: &Settings) -> (anyhow::Result<generator::summary::RunSummary>, Metrics) {
    let metrics = Metrics::new().unwrap();
    let result =
        generator::startup::generate_with_metrics(settings, &CancellationToken::new(), &metrics);
    (result, metrics)
}

/// Every message of the topic, partition by partition in offset order. The high watermarks say
/// how many there are (an idempotent, non-transactional producer writes no control records).
fn consume_all(brokers: &str) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "generator-tests")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut expected = 0;
    for partition in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
            .unwrap();
        expected += (high - low) as usize;
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut messages = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(60);
    while messages.len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} messages",
            messages.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            messages.push(Consumed {
                partition: message.partition(),
                key: String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
                payload: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    messages
}

/// The rows the seeded generator must have produced, in order.
fn expected_rows(settings: &Settings, count: u64) -> Vec<Row> {
    let start: DateTime<Utc> = START.parse().unwrap();
    let mut source = RowSource::new(settings, SEED, start);
    (0..count).map(|i| source.next_row(i)).collect()
}

/// A message's fields, by the contract's column order.
fn payload_fields(payload: &[u8], format: KafkaFormat) -> csv::ByteRecord {
    match format {
        KafkaFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(payload);
            let mut record = csv::ByteRecord::new();
            assert!(reader.read_byte_record(&mut record).unwrap());
            record
        }
        KafkaFormat::Json => {
            let value: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(payload).unwrap();
            let fields: Vec<&str> = COLUMNS
                .iter()
                .map(|c| value[c.name()].as_str().unwrap())
                .collect();
            csv::ByteRecord::from(fields)
        }
    }
}

/// The message sequence per user key.
fn by_user<'a>(
    messages: impl IntoIterator<Item = (String, &'a [u8])>,
) -> BTreeMap<String, Vec<&'a [u8]>> {
    let mut users: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
    for (key, payload) in messages {
        users.entry(key).or_default().push(payload);
    }
    users
}

fn every_message_is_the_expected_one_keyed_by_user_in_user_order(format: KafkaFormat) {
    // Arrange
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let settings = settings(&brokers, format, 3, 400).validate().unwrap();
    // Act
    let (summary, _) = produce(&settings);
    let consumed = consume_all(&brokers);
    // Assert
    let summary = summary.unwrap();
    assert_eq!((summary.files, summary.published.rows), (3, 1_200));
    assert_eq!(consumed.len(), 1_200, "one message per row, no more");
    let expected: Vec<(String, Vec<u8>)> = expected_rows(&settings, 1_200)
        .iter()
        .map(|row| {
            let (mut key, mut payload) = (String::new(), Vec::new());
            message::key(row, &mut key);
            message::encode(row, format, &mut payload).unwrap();
            (key, payload)
        })
        .collect();
    let want = by_user(expected.iter().map(|(k, p)| (k.clone(), p.as_slice())));
    let got = by_user(
        consumed
            .iter()
            .map(|m| (m.key.clone(), m.payload.as_slice())),
    );
    assert!(want.len() > 10, "many users: {}", want.len());
    assert_eq!(got, want, "each user's messages, in the order generated");
    let mut partition_of = HashMap::new();
    let ctx = ValidationContext::now();
    for message in &consumed {
        assert_eq!(
            *partition_of
                .entry(message.key.clone())
                .or_insert(message.partition),
            message.partition,
            "a user's messages share one partition"
        );
        let event = parse_record(
            &payload_fields(&message.payload, format),
            &HeaderLayout::canonical(),
            &ctx,
        )
        .unwrap();
        assert_eq!(event.user_id.to_string(), message.key, "keyed by user id");
    }
    let partitions: HashSet<i32> = partition_of.values().copied().collect();
    assert_eq!(
        partitions.len(),
        PARTITIONS as usize,
        "users spread over all partitions"
    );
}

#[test]
fn csv_messages_are_the_contract_lines_keyed_by_user_in_user_order() {
    every_message_is_the_expected_one_keyed_by_user_in_user_order(KafkaFormat::Csv);
}

#[test]
fn json_messages_hold_the_six_fields_keyed_by_user_in_user_order() {
    every_message_is_the_expected_one_keyed_by_user_in_user_order(KafkaFormat::Json);
}

#[test]
fn invalid_and_duplicate_messages_come_out_at_their_ratios_and_the_metrics_count_them() {
    // Arrange
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let settings = RawSettings {
        invalid_ratio: 0.1,
        duplicate_ratio: 0.05,
        ..settings(&brokers, KafkaFormat::Csv, 4, 1_000)
    }
    .validate()
    .unwrap();
    // Act
    let (summary, metrics) = produce(&settings);
    let consumed = consume_all(&brokers);
    // Assert
    let summary = summary.unwrap();
    assert_eq!(consumed.len(), 4_000);
    let ctx = ValidationContext::now();
    let (mut rejected, mut duplicates, mut ids) = (BTreeMap::new(), 0, HashSet::new());
    for message in &consumed {
        let fields = payload_fields(&message.payload, KafkaFormat::Csv);
        match parse_record(&fields, &HeaderLayout::canonical(), &ctx) {
            Ok(event) => duplicates += usize::from(!ids.insert(event.event_id)),
            Err(rejection) => *rejected.entry(rejection.reason.code()).or_insert(0) += 1,
        }
    }
    let invalid: u64 = rejected.values().sum();
    assert!((300..500).contains(&invalid), "{invalid}: {rejected:?}");
    assert!(rejected.len() >= 8, "many reasons: {rejected:?}");
    assert!((120..290).contains(&duplicates), "{duplicates}");
    assert_eq!(invalid, summary.published.invalid, "as the summary says");
    assert_eq!(duplicates as u64, summary.published.duplicates);
    let text = metrics.render();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("generator_kafka_messages_produced_total"), 4_000.0);
    assert_eq!(value("generator_kafka_messages_failed_total"), 0.0);
    assert_eq!(
        value("generator_kafka_delivery_latency_seconds_count"),
        4_000.0
    );
    assert_eq!(
        value("generator_events_total{kind=\"invalid\"}"),
        invalid as f64
    );
    assert_eq!(
        value("generator_events_total{kind=\"duplicate\"}"),
        duplicates as f64
    );
    assert_eq!(value("generator_files_total"), 0.0, "no files were written");
}

#[test]
fn messages_the_brokers_refuse_fail_the_run_and_are_counted_as_failed() {
    // Arrange: every produce request is refused with an error that is not retried.
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64],
    );
    let settings = settings(&brokers, KafkaFormat::Csv, 1, 50)
        .validate()
        .unwrap();
    // Act
    let (result, metrics) = produce(&settings);
    // Assert: the run fails naming the refusal. Which message meets it first depends on
    // timing: a delivery report ("were not delivered", all 50 counted as failed), or, once the
    // idempotent producer has turned the refusal into a fatal error, a later `send` refused
    // at once ("cannot produce", that message counted). Either way nothing is counted as
    // delivered.
    let error = format!("{:#}", result.unwrap_err());
    assert!(
        error.contains("TopicAuthorizationFailed") || error.contains("authorization"),
        "{error}"
    );
    let text = metrics.render();
    let failed: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("generator_kafka_messages_failed_total "))
        .unwrap_or_else(|| panic!("no failed counter in {text}"))
        .parse()
        .unwrap();
    if error.contains("were not delivered") {
        assert_eq!(failed, 50.0, "{text}");
    } else {
        assert!(error.contains("cannot produce"), "{error}");
        assert!(failed >= 1.0, "{text}");
    }
    assert!(
        text.contains("generator_events_total{kind=\"valid\"} 0"),
        "rows of an undelivered batch are not counted: {text}"
    );
}

#[test]
fn an_unknown_topic_stops_start_up_naming_it() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    // The mock cluster creates topics on demand unless told the topic is unknown.
    cluster
        .topic_error(
            "nowhere",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    let settings = RawSettings {
        kafka_topic: "nowhere".to_owned(),
        ..settings(&brokers, KafkaFormat::Csv, 1, 10)
    }
    .validate()
    .unwrap();
    let error = format!("{:#}", produce(&settings).0.unwrap_err());
    assert!(
        error.contains("nowhere") && error.contains("kafka_topic"),
        "{error}"
    );
}

/// The binary as a user runs it, with the flags.
fn generate(brokers: &str, args: &[&str]) -> Output {
    Command::new(GENERATOR)
        .args(["--sink", "kafka", "--kafka-brokers", brokers])
        .args(["--log-format", "json", "--listen", "127.0.0.1:0"])
        .args(["--rate", "1000000", "--seed", "5"])
        .args(args)
        // Nothing may be written to the directory sink's default output.
        .current_dir(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .output()
        .unwrap()
}

#[test]
fn the_binary_produces_to_the_cluster_given_on_the_command_line() {
    // Arrange
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    // Act
    let output = generate(
        &brokers,
        &["--files", "2", "--rows", "250", "--kafka-format", "json"],
    );
    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let consumed = consume_all(&brokers);
    assert_eq!(consumed.len(), 500);
    for message in &consumed {
        let fields = payload_fields(&message.payload, KafkaFormat::Json);
        assert_eq!(&fields[1], message.key.as_bytes(), "keyed by user id");
    }
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {stdout}"))
    };
    assert_eq!(line("Generator starting")["sink"], "kafka");
    assert_eq!(line("Kafka producer ready")["partitions"], PARTITIONS);
    let summary = line("Generator finished");
    assert_eq!(
        (summary["files"].as_u64(), summary["rows"].as_u64()),
        (Some(2), Some(500))
    );
}

#[test]
fn the_binary_refuses_a_kafka_sink_without_brokers_naming_the_key() {
    let output = Command::new(GENERATOR)
        .args(["--sink", "kafka", "--listen", "127.0.0.1:0"])
        .env_remove("GENERATOR_KAFKA_BROKERS")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`kafka_brokers`"), "{stderr}");
}

/// The samples of a Prometheus text exposition, by series.
fn samples(exposition: &str) -> HashMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn while_running_the_metrics_count_acknowledged_messages_and_sigterm_delivers_the_rest() {
    // Arrange: 500 rows/s in batches of 50, until SIGTERM.
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let ready_dir = tempfile::tempdir().unwrap();
    let ready_file = ready_dir.path().join("ready.json");
    let child = Command::new(GENERATOR)
        .args(["--sink", "kafka", "--kafka-brokers", &brokers])
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--ready-file")
        .arg(&ready_file)
        .args(["--rate", "500", "--rows", "50", "--files", "0"])
        .args(["--invalid-ratio", "0.1", "--duplicate-ratio", "0.05"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = stack_tests::ChildGuard::new(child);
    let port = guard
        .wait_for_ready_file(&ready_file, Duration::from_secs(20))
        .unwrap_or_else(|why| panic!("the generator did not start: {why}"))
        .port();

    // Act: scrape until three batches are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, body) = stack_tests::http_get(port, "/metrics");
        assert_eq!(status, 200, "{body}");
        let metrics = samples(&body);
        if metrics["generator_kafka_messages_produced_total"] >= 150.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    };

    // Assert: whole batches, every one with its latency, rows counted by kind.
    let produced = metrics["generator_kafka_messages_produced_total"];
    assert_eq!(produced % 50.0, 0.0, "counted per acknowledged batch");
    assert_eq!(
        metrics["generator_kafka_delivery_latency_seconds_count"],
        produced
    );
    let kind = |k: &str| metrics[&format!("generator_events_total{{kind=\"{k}\"}}")];
    assert_eq!(
        kind("valid") + kind("duplicate") + kind("invalid"),
        produced
    );
    assert!(
        metrics["generator_bytes_total"] > produced * 50.0,
        "payload bytes"
    );

    // Act: stop it mid-batch.
    let status = Command::new("kill")
        .args(["-TERM", &guard.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = guard
        .wait_with_timeout(Duration::from_secs(15))
        .expect("did not exit on SIGTERM");

    // Assert: the summary accounts for exactly the messages in the topic; nothing discarded.
    assert!(exit.success(), "{exit:?}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(guard.child_mut().stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "Generator finished")
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    let consumed = consume_all(&brokers);
    assert_eq!(summary["rows"].as_u64(), Some(consumed.len() as u64));
    assert_eq!(summary["discarded_rows"].as_u64(), Some(0));
    assert!(consumed.len() as f64 >= produced);
}
