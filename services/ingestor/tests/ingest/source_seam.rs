//! The source interface (`ingestor::source::Source`) holds a second kind of source: an in-test
//! log of partitions whose units are offset ranges, claimed together with an offsets row in the
//! loading transaction (the shape issue 14's Kafka source takes). It is run by the real loader
//! loops against a real PostgreSQL database, unchanged: the exactly-once core never learns what
//! kind of source it loads from.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{SecondsFormat, Utc};
use event_contract::HEADER_LINE;
use ingestor::internal_events::Metrics;
use ingestor::model::{FileFailure, FileIdentity, LedgerStatus, Settled};
use ingestor::pipeline::worker::{self, WorkerState};
use ingestor::readiness::Readiness;
use ingestor::source::{NotOpened, Opened, ReadMessage, ReadOptions, Source, Unit};
use ingestor::store::build_pool;
use ingestor::store::ledger::{self, Claim};
use ingestor::store::presence::Presence;
use stack_tests::TestDatabase;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A partition's messages `first..first + lines.len()`, as the loader's unit of work.
#[derive(Debug, Clone)]
struct OffsetRange {
    partition: i32,
    first: i64,
    /// One event per message, as the contract's CSV line.
    lines: Arc<Vec<String>>,
    /// Reading breaks off after the last message (a consumer that loses its connection).
    breaks_off: bool,
    name: String,
    landed: SystemTime,
}

impl OffsetRange {
    fn new(partition: i32, first: i64, lines: Vec<String>, breaks_off: bool) -> Self {
        let next = first + lines.len() as i64;
        OffsetRange {
            partition,
            first,
            name: format!("events-{partition}@{first}..{next}"),
            lines: Arc::new(lines),
            breaks_off,
            landed: SystemTime::now(),
        }
    }

    fn next(&self) -> i64 {
        self.first + self.lines.len() as i64
    }

    /// The messages as the contract's CSV, for its one reader.
    fn bytes(&self) -> Vec<u8> {
        let mut csv = format!("{HEADER_LINE}\n");
        for line in self.lines.iter() {
            csv.push_str(line);
            csv.push('\n');
        }
        csv.into_bytes()
    }
}

impl Unit for OffsetRange {
    type Key = i32;
    type Opened = OpenedRange;

    fn key(&self) -> i32 {
        self.partition
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.bytes().len() as u64
    }

    fn landed(&self) -> SystemTime {
        self.landed
    }

    fn open(&self) -> Result<OpenedRange, NotOpened> {
        let bytes = self.bytes();
        let identity = FileIdentity {
            size: bytes.len() as u64,
            hash: *blake3::hash(&bytes).as_bytes(),
        };
        Ok(OpenedRange {
            range: self.clone(),
            bytes,
            identity,
        })
    }
}

/// A range "polled": its bytes in memory, their identity known.
struct OpenedRange {
    range: OffsetRange,
    bytes: Vec<u8>,
    identity: FileIdentity,
}

impl Opened for OpenedRange {
    /// The partition and the offset it was read up to.
    type Receipt = (i32, i64);

    fn identity(&self) -> FileIdentity {
        self.identity
    }

    fn receipt(&self) -> (i32, i64) {
        (self.range.partition, self.range.next())
    }

    /// The ledger entry, then the partition's offsets row moved forward from exactly where this
    /// range starts, in the same transaction: both commit with the rows or neither does.
    async fn claim(&self, tx: &Transaction<'_>, instance: &str) -> anyhow::Result<Claim> {
        let range = &self.range;
        let claim = ledger::claim(tx, &self.identity, &range.name, range.landed, instance).await?;
        if matches!(claim, Claim::Claimed { .. }) {
            let advanced = tx
                .execute(
                    "UPDATE test_offsets SET next_offset = $3 \
                     WHERE partition = $1 AND next_offset = $2",
                    &[&range.partition, &range.first, &range.next()],
                )
                .await?;
            anyhow::ensure!(
                advanced == 1,
                "{} is not the partition's next range",
                range.name
            );
        }
        Ok(claim)
    }

    async fn record_failed(
        &self,
        tx: &Transaction<'_>,
        instance: &str,
        failure: &FileFailure,
    ) -> anyhow::Result<i64> {
        let range = &self.range;
        ledger::record_failed(
            tx,
            &self.identity,
            &range.name,
            range.landed,
            instance,
            failure,
        )
        .await
    }

    fn read_rows(&self, options: ReadOptions, sender: &mpsc::Sender<ReadMessage>) {
        let bytes = Cursor::new(self.bytes.clone());
        if self.range.breaks_off {
            ingestor::source::reader::read_rows(BreaksOff(bytes), options, sender);
        } else {
            ingestor::source::reader::read_rows(bytes, options, sender);
        }
    }
}

/// Reads its bytes, then fails where the end would be.
struct BreaksOff(Cursor<Vec<u8>>);

impl Read for BreaksOff {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "broker gone",
            )),
            n => Ok(n),
        }
    }
}

impl Seek for BreaksOff {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.0.seek(to)
    }
}

/// What the source was told after each batch, in order.
#[derive(Debug, Clone, PartialEq)]
enum Acked {
    Loaded(String),
    Known(String, LedgerStatus),
    Untouched(String),
    Other(String),
}

/// An in-memory log: per partition, the ranges still to load, oldest first. Clones share it:
/// the loader owns one, the test reads another.
#[derive(Clone)]
struct MemoryLog {
    pending: Arc<Mutex<BTreeMap<i32, Vec<OffsetRange>>>>,
    acked: Arc<Mutex<Vec<Acked>>>,
    wake: Arc<watch::Sender<u64>>,
}

impl MemoryLog {
    fn new(ranges: Vec<OffsetRange>) -> Self {
        let mut pending: BTreeMap<i32, Vec<OffsetRange>> = BTreeMap::new();
        for range in ranges {
            pending.entry(range.partition).or_default().push(range);
        }
        MemoryLog {
            pending: Arc::new(Mutex::new(pending)),
            acked: Arc::default(),
            wake: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Source for MemoryLog {
    type Unit = OffsetRange;

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// The head range of each partition: a partition's ranges load in order.
    fn ready(&self, _metrics: &Metrics) -> Vec<OffsetRange> {
        let pending = self.pending.lock().unwrap();
        pending
            .values()
            .filter_map(|p| p.first().cloned())
            .collect()
    }

    fn report_backlog(&self, _metrics: &Metrics) {}

    /// A committed range leaves the log's pending list; one that broke off is polled again
    /// (the next poll reads it whole).
    fn acknowledge(
        &self,
        unit: &OffsetRange,
        settled: Settled<'_, (i32, i64)>,
        _metrics: &Metrics,
    ) -> anyhow::Result<()> {
        let name = unit.name.clone();
        let acked = match settled {
            Settled::Loaded { read, .. } => {
                assert_eq!(*read, (unit.partition, unit.next()));
                Acked::Loaded(name)
            }
            Settled::Known { status, .. } => Acked::Known(name, status),
            Settled::Untouched => Acked::Untouched(name),
            other => Acked::Other(format!("{name}: {other:?}")),
        };
        let mut pending = self.pending.lock().unwrap();
        let partition = pending.get_mut(&unit.partition).unwrap();
        if partition.first().is_some_and(|head| head.name == unit.name) {
            if matches!(acked, Acked::Untouched(_)) {
                partition[0].breaks_off = false;
            } else {
                partition.remove(0);
            }
        }
        self.acked.lock().unwrap().push(acked);
        self.wake.send_modify(|n| *n += 1);
        Ok(())
    }
}

fn event_line(id: Uuid) -> String {
    let at =
        (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339_opts(SecondsFormat::Micros, true);
    format!("{id},42,7,purchase,19.99,{at}")
}

/// Two partitions: partition 0 loads a range and then sees it again (offsets reset to the
/// earliest); partition 1 loads a range with an invalid message, then a range whose reading
/// breaks off once, and is read whole on the next poll. Every message is accounted for once,
/// the offsets rows end where the last committed ranges end, and the source was told each
/// outcome after its COMMIT.
#[tokio::test]
async fn a_second_kind_of_source_loads_exactly_once_through_the_unchanged_loader() {
    // Arrange
    let db = TestDatabase::create().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE test_offsets (partition int PRIMARY KEY, next_offset bigint NOT NULL); \
             INSERT INTO test_offsets VALUES (0, 0), (1, 0);",
        )
        .await
        .unwrap();
    let ids: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
    let line = |i: usize| event_line(ids[i]);
    let first = OffsetRange::new(0, 0, vec![line(0), line(1), line(2)], false);
    let replayed = OffsetRange::new(0, 0, first.lines.to_vec(), false);
    let with_invalid = OffsetRange::new(1, 0, vec![line(3), "not,an,event".into()], false);
    let breaking = OffsetRange::new(1, 2, vec![line(4), line(5), line(6), line(3)], true);
    let log = MemoryLog::new(vec![
        first.clone(),
        replayed.clone(),
        with_invalid.clone(),
        breaking.clone(),
    ]);
    let input = tempfile::tempdir().unwrap();
    let flags = serde_json::json!({
        "input_dir": input.path(),
        "database_url": db.url,
        // One loop: each partition's outcomes arrive in a fixed order.
        "loaders": 1,
    });
    let settings = Arc::new(ingestor::config::load(None, &flags).unwrap());
    let metrics = Metrics::new().unwrap();
    let cancel = CancellationToken::new();
    let state = WorkerState {
        metrics: metrics.clone(),
        readiness: Readiness::new(metrics),
        presence: Presence::spawn(settings.clone(), cancel.clone()),
    };
    let pool = build_pool(&settings);

    // Act
    let loops = tokio::spawn(worker::run(
        settings.clone(),
        pool,
        log.clone(),
        state,
        cancel.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while log.pending.lock().unwrap().values().any(|p| !p.is_empty()) {
        assert!(Instant::now() < deadline, "not drained: {:?}", log.acked);
        let mut changes = log.wake.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
    cancel.cancel();
    loops.await.unwrap().unwrap();

    // Assert: the source heard every outcome, in each partition's order.
    let acked = log.acked.lock().unwrap().clone();
    let of = |partition: &str| -> Vec<Acked> {
        acked
            .iter()
            .filter(|a| format!("{a:?}").contains(partition))
            .cloned()
            .collect()
    };
    assert_eq!(
        of("events-0@"),
        [
            Acked::Loaded(first.name.clone()),
            Acked::Known(replayed.name.clone(), LedgerStatus::Loaded)
        ]
    );
    assert_eq!(
        of("events-1@"),
        [
            Acked::Loaded(with_invalid.name.clone()),
            Acked::Untouched(breaking.name.clone()),
            Acked::Loaded(breaking.name.clone())
        ]
    );
    // Every valid id once; the invalid message rejected; the repeated id a duplicate.
    let stored: HashSet<Uuid> = select(&client, "SELECT event_id FROM events", |r| r.get(0))
        .await
        .into_iter()
        .collect();
    assert_eq!(stored, ids.iter().copied().collect::<HashSet<_>>());
    let ledger = select(
        &client,
        "SELECT file_name, status, lines, accepted, duplicates, rejected \
         FROM ingest_files ORDER BY file_name",
        |r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)),
    )
    .await;
    let loaded = |name: &str, counts: [i64; 4]| -> (String, String, i64, i64, i64, i64) {
        let [lines, accepted, duplicates, rejected] = counts;
        (
            name.to_owned(),
            "loaded".to_owned(),
            lines,
            accepted,
            duplicates,
            rejected,
        )
    };
    assert_eq!(
        ledger,
        [
            loaded(&first.name, [3, 3, 0, 0]),
            loaded(&with_invalid.name, [2, 1, 0, 1]),
            loaded(&breaking.name, [4, 3, 1, 0]),
        ]
    );
    // The offsets moved with the rows, once per committed range: the broken-off read left
    // nothing (or the next read's claim would have found its offsets row out of step).
    let offsets = select(
        &client,
        "SELECT partition, next_offset FROM test_offsets ORDER BY 1",
        |r| (r.get::<_, i32>(0), r.get::<_, i64>(1)),
    )
    .await;
    assert_eq!(offsets, [(0, first.next()), (1, breaking.next())]);
}

/// The rows of `sql`, each made a value by `row`.
async fn select<T>(
    client: &tokio_postgres::Client,
    sql: &str,
    row: impl Fn(&tokio_postgres::Row) -> T,
) -> Vec<T> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(row)
        .collect()
}
