//! A file that changes under its name while it is being loaded: a producer renames new content
//! onto the name, appends to the file or rewrites part of it in place, or reuses the name after
//! another replica archived it while this one was frozen. What was read is committed; the name
//! is moved only if it still holds exactly that file, and otherwise left in place, so the bytes
//! nobody loaded yet are loaded as a new file instead of being archived unloaded.
//!
//! Each race is made deterministic with a lock the test holds, never with timing: an
//! uncommitted insert of one of the file's event ids (a loader's COPY waits for it with
//! `conflict_wait_ms = 0`), or, to freeze a replica between COMMIT and the move, a deferred
//! trigger that makes COMMIT wait for an advisory lock.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stack_tests::TestDatabase;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::helpers::*;

const HEADER: &str = "event_id,user_id,product_id,event_type,price,event_timestamp";
/// Bound on each wait: typical runs take a fraction of it.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The name every test's producer publishes to.
const NAME: &str = "orders.csv";
/// Settings of every ingestor here: a COPY that meets an event id another transaction is
/// inserting waits for that transaction instead of deferring the file, so the test's held id
/// holds the load exactly where the test wants it.
const WAIT_FOR_CONFLICTS: (&str, &str) = ("INGESTOR_CONFLICT_WAIT_MS", "0");

#[tokio::test]
async fn new_content_renamed_onto_the_name_during_the_copy_is_loaded_not_archived_unread() {
    // Arrange: a 5,000-row file streamed in chunks of 100 rows; the test holds the event id of
    // its first row, so the first chunk's COPY waits while the rest of the file is still unread.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let mut producer = Producer::new();
    let old = rows(5_000);
    let new = rows(100);
    let ingestor = Ingestor::spawn(
        &ingestor_url(&db),
        input,
        &[WAIT_FOR_CONFLICTS, ("INGESTOR_CHUNK_ROWS", "100")],
    );
    let held = HeldEventId::take(&db, old[0].0).await;
    producer.publish(input, &old);
    wait_until_a_session_waits_for_a_lock(&db.client().await, || {
        format!("{:#?}", ingestor.log_lines())
    })
    .await;

    // Act: new content is renamed onto the name while the old file's COPY runs.
    producer.publish(input, &new);
    held.release().await;
    wait_for_ledger(&db, input, 2, TIMEOUT).await;

    // Assert
    assert_everything_published_is_stored(&db, &producer).await;
    let archived = assert_archive_was_loaded(&db, input).await;
    assert_eq!(
        archived,
        BTreeMap::from([(NAME.to_owned(), producer.version(1).to_vec())]),
        "the old file was replaced before it could be archived; the new one is archived once loaded"
    );
    assert_ledger(&db, &[(5_000, 5_000, 0), (100, 100, 0)]).await;
    assert_reported(&ingestor, "replaced");
}

#[tokio::test]
async fn rows_appended_after_the_read_are_loaded_as_a_new_file() {
    // Arrange: 100 rows, read in one chunk (sent at the end of the file), whose COPY waits for
    // the test's held event id: the file has been read to its end.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let mut producer = Producer::new();
    let first = rows(100);
    let ingestor = Ingestor::spawn(&ingestor_url(&db), input, &[WAIT_FOR_CONFLICTS]);
    let held = HeldEventId::take(&db, first[49].0).await;
    producer.publish(input, &first);
    wait_until_a_session_waits_for_a_lock(&db.client().await, || {
        format!("{:#?}", ingestor.log_lines())
    })
    .await;

    // Act: the producer appends 50 rows to the file already read.
    producer.append(input, &rows(50));
    held.release().await;
    wait_for_ledger(&db, input, 2, TIMEOUT).await;

    // Assert: the 100 rows as read, then the whole file again: 100 duplicates, 50 new rows.
    assert_everything_published_is_stored(&db, &producer).await;
    let archived = assert_archive_was_loaded(&db, input).await;
    assert_eq!(
        archived,
        BTreeMap::from([(NAME.to_owned(), producer.version(1).to_vec())])
    );
    assert_ledger(&db, &[(100, 100, 0), (150, 50, 100)]).await;
    assert_reported(&ingestor, "modified");
}

#[tokio::test]
async fn a_region_rewritten_in_place_after_the_read_is_loaded_as_a_new_file() {
    // Arrange: as above, the file has been read to its end when its COPY waits.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let mut producer = Producer::new();
    let first = rows(100);
    let ingestor = Ingestor::spawn(&ingestor_url(&db), input, &[WAIT_FOR_CONFLICTS]);
    let held = HeldEventId::take(&db, first[99].0).await;
    producer.publish(input, &first);
    wait_until_a_session_waits_for_a_lock(&db.client().await, || {
        format!("{:#?}", ingestor.log_lines())
    })
    .await;

    // Act: the producer rewrites the first row's event id in place (same size).
    producer.rewrite_first_id(input);
    held.release().await;
    wait_for_ledger(&db, input, 2, TIMEOUT).await;

    // Assert: the 100 rows as read, then the rewritten file: 99 duplicates, 1 new event.
    assert_everything_published_is_stored(&db, &producer).await;
    let archived = assert_archive_was_loaded(&db, input).await;
    assert_eq!(
        archived,
        BTreeMap::from([(NAME.to_owned(), producer.version(1).to_vec())])
    );
    assert_ledger(&db, &[(100, 100, 0), (100, 1, 99)]).await;
    assert_reported(&ingestor, "modified");
}

#[tokio::test]
async fn a_replica_frozen_after_commit_leaves_a_reused_name_to_be_loaded() {
    // Arrange: replica A loads a file, and is frozen (SIGSTOP) while its COMMIT waits on the
    // test's commit gate; the gate then opens, so the COMMIT completes on the server while A
    // cannot move the file yet.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let mut producer = Producer::new();
    let gate = CommitGate::close(&db).await;
    let frozen = Ingestor::spawn(
        &ingestor_url(&db),
        input,
        &[("INGESTOR_INSTANCE_ID", "replica-a")],
    );
    producer.publish(input, &rows(100));
    wait_until_a_session_waits_for_a_lock(&db.client().await, || {
        format!("{:#?}", frozen.log_lines())
    })
    .await;
    freeze(frozen.pid());
    gate.open().await;
    wait_for_finished(&db, 1).await;

    // Replica B finds the content in the ledger and archives the file, then stops.
    let other = Ingestor::spawn(
        &ingestor_url(&db),
        input,
        &[("INGESTOR_INSTANCE_ID", "replica-b")],
    );
    wait_until(TIMEOUT, "replica B archives the file", || {
        !input.join(NAME).exists() && input.join("processed").join(NAME).exists()
    })
    .await;
    assert!(other.wait_for_log("File content already in the ledger", TIMEOUT));
    let exit = other.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?}");

    // Act: the producer reuses the name, then replica A resumes where it stopped: moving the
    // file it loaded.
    producer.publish(input, &rows(100));
    signal(frozen.pid(), "CONT");
    wait_for_ledger(&db, input, 2, TIMEOUT).await;

    // Assert
    assert_everything_published_is_stored(&db, &producer).await;
    let archived = assert_archive_was_loaded(&db, input).await;
    let mut contents: Vec<Vec<u8>> = archived.values().cloned().collect();
    contents.sort();
    let mut versions = vec![producer.version(0).to_vec(), producer.version(1).to_vec()];
    versions.sort();
    assert_eq!(
        contents, versions,
        "each content archived once: {archived:?}"
    );
    assert_ledger(&db, &[(100, 100, 0), (100, 100, 0)]).await;
    assert_reported(&frozen, "replaced");
    let exit = frozen.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?}");
}

// ---------------------------------------------------------------------------------------------
// The producer, and the locks that hold a load where a test wants it.
// ---------------------------------------------------------------------------------------------

/// `n` valid rows with new event ids: (id, line without its newline).
fn rows(n: usize) -> Vec<(Uuid, String)> {
    let stamp = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    (0..n)
        .map(|i| {
            let id = Uuid::new_v4();
            (id, format!("{id},{},{},view,,{stamp}", i + 1, i % 50 + 1))
        })
        .collect()
}

/// Publishes versions of [`NAME`] into an input directory and keeps a copy of every version
/// the name ever held, for the expected outcome.
struct Producer {
    staging: tempfile::TempDir,
    versions: Vec<PathBuf>,
}

impl Producer {
    fn new() -> Self {
        Producer {
            staging: tempfile::tempdir().unwrap(),
            versions: Vec::new(),
        }
    }

    /// Writes a new file under a hidden name, then renames it onto [`NAME`].
    fn publish(&mut self, input: &Path, rows: &[(Uuid, String)]) {
        let body: String = rows.iter().map(|(_, line)| format!("{line}\n")).collect();
        let staged = input.join(format!(".{NAME}.tmp"));
        std::fs::write(&staged, format!("{HEADER}\n{body}")).unwrap();
        self.keep(&staged);
        std::fs::rename(&staged, input.join(NAME)).unwrap();
    }

    /// Appends rows to the file the name holds.
    fn append(&mut self, input: &Path, rows: &[(Uuid, String)]) {
        let path = input.join(NAME);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        for (_, line) in rows {
            writeln!(file, "{line}").unwrap();
        }
        drop(file);
        self.keep(&path);
    }

    /// Replaces the first row's event id with a new one, in place. If the file's mtime did not
    /// move (the write fell in the clock tick of the last one), the bytes are written again a
    /// tick later: the test is about a rewrite the file's metadata shows.
    fn rewrite_first_id(&mut self, input: &Path) {
        let path = input.join(NAME);
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        let id = Uuid::new_v4().to_string();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let offset = HEADER.len() as u64 + 1;
        loop {
            file.write_all_at(id.as_bytes(), offset).unwrap();
            if std::fs::metadata(&path).unwrap().modified().unwrap() != before {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(file);
        self.keep(&path);
    }

    fn keep(&mut self, path: &Path) {
        let copy = self
            .staging
            .path()
            .join(format!("version-{}.csv", self.versions.len()));
        std::fs::copy(path, &copy).unwrap();
        self.versions.push(copy);
    }

    /// The bytes of the `n`th version.
    fn version(&self, n: usize) -> Vec<u8> {
        std::fs::read(&self.versions[n]).unwrap()
    }
}

/// An uncommitted insert of one event id in a transaction of the test's: a loader's COPY that
/// meets the same id waits until it ends.
struct HeldEventId {
    client: Client,
}

impl HeldEventId {
    async fn take(db: &TestDatabase, id: Uuid) -> Self {
        let client = db.client().await;
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO events (event_id, user_id, product_id, event_type, \
                 event_timestamp) VALUES ('{id}', 1, 1, 'view', now())"
            ))
            .await
            .unwrap();
        HeldEventId { client }
    }

    /// Rolls the insert back: the waiting COPY goes on, and the id is the file's.
    async fn release(self) {
        self.client.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// Makes every COMMIT that wrote to the ledger wait until the test opens it: a deferred
/// constraint trigger runs at COMMIT and takes, shared, an advisory lock the test holds. It
/// lifts the loader's own `lock_timeout` (`conflict_wait_ms`, 50 ms) first: under it the COMMIT
/// gave up, and its batch rolled back, whenever a loaded machine let the test take longer than
/// that between seeing the wait and opening the gate.
struct CommitGate {
    client: Client,
}

impl CommitGate {
    const LOCK: &str = "20261121, 12";

    async fn close(db: &TestDatabase) -> Self {
        let client = db.client().await;
        client
            .batch_execute(&format!(
                "CREATE FUNCTION test_commit_gate() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM set_config('lock_timeout', '0', true); \
                 PERFORM pg_advisory_xact_lock_shared({lock}); RETURN NULL; END $$; \
                 CREATE CONSTRAINT TRIGGER test_commit_gate AFTER INSERT OR UPDATE ON ingest_files \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_commit_gate(); \
                 SELECT pg_advisory_lock({lock});",
                lock = Self::LOCK
            ))
            .await
            .unwrap();
        CommitGate { client }
    }

    async fn open(self) {
        self.client
            .batch_execute(&format!("SELECT pg_advisory_unlock({})", Self::LOCK))
            .await
            .unwrap();
    }
}

/// Waits until `files` ledger entries are finished (whatever the input directory holds).
async fn wait_for_finished(db: &TestDatabase, files: i64) {
    let client = db.client().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let finished: i64 = client
            .query_one(
                "SELECT count(*) FROM ingest_files WHERE status IN ('loaded', 'failed')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if finished >= files {
            return;
        }
        assert!(Instant::now() < deadline, "{finished} of {files} finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(timeout: Duration, what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions.
// ---------------------------------------------------------------------------------------------

/// The events table holds exactly the valid unique events of every version the name ever
/// held, each version has one loaded ledger entry, and every line is accounted for.
async fn assert_everything_published_is_stored(db: &TestDatabase, producer: &Producer) {
    assert_exact(db, &expected(&producer.versions)).await;
    assert_ledger_matches_tables(db).await;
}

/// Every file in the archive is the byte-for-byte content of a loaded ledger entry (its hash
/// and size), and nothing was left in the input or failed directory; returns the archive by
/// name.
async fn assert_archive_was_loaded(db: &TestDatabase, input: &Path) -> BTreeMap<String, Vec<u8>> {
    assert!(csv_names(input).is_empty(), "files left in the input");
    assert!(event_files(&input.join("failed")).is_empty());
    let loaded = loaded_identities(db).await;
    let mut archive = BTreeMap::new();
    for path in event_files(&input.join("processed")) {
        let identity = ingestor::source::reader::identify(&path).unwrap();
        assert!(
            loaded.contains(&(identity.hash.to_vec(), identity.size as i64)),
            "{} was archived but never loaded",
            path.display()
        );
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        archive.insert(name, std::fs::read(&path).unwrap());
    }
    archive
}

/// The ledger's entries, in order: (lines, accepted, duplicates), nothing rejected.
async fn assert_ledger(db: &TestDatabase, entries: &[(i64, i64, i64)]) {
    let rows = db
        .client()
        .await
        .query(
            "SELECT lines, accepted, duplicates, rejected, file_name FROM ingest_files \
             WHERE status = 'loaded' ORDER BY file_id",
            &[],
        )
        .await
        .unwrap();
    let found: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(found, entries);
    assert!(rows.iter().all(|r| r.get::<_, i64>(3) == 0));
    assert!(rows.iter().all(|r| r.get::<_, String>(4) == NAME));
}

/// The ingestor said what happened: one warning naming the file and the change, and the
/// counter of that change at 1.
fn assert_reported(ingestor: &Ingestor, change: &str) {
    let warnings: Vec<String> = ingestor
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("File changed after it was read"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let warning: serde_json::Value = serde_json::from_str(&warnings[0]).unwrap();
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["file"], NAME, "{warning}");
    assert_eq!(warning["change"], change, "{warning}");
    let (status, metrics) = ingestor.get("/metrics");
    assert_eq!(status, 200);
    let line = format!("ingestor_files_changed_total{{change=\"{change}\"}} 1");
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in:\n{metrics}"
    );
}
