//! Hostile and malformed input. Every kind of broken file has one documented outcome: either
//! the whole file fails with a reason code and goes to `failed/`, or it loads and each bad row is
//! rejected at its own line. No input may stop the service, wedge it or make its memory grow.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use event_contract::{
    EventReader, ExtraColumnPolicy, ValidationContext, DEFAULT_MAX_RECORD_BYTES, HEADER_LINE,
};
use ingestor::model::FileIdentity;
use ingestor::source::reader::{read_rows, ReadEnd, ReadMessage, ReadOptions};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use stack_tests::TestDatabase;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// The corpus: one ingestor, many broken files, one expected outcome each.
// ---------------------------------------------------------------------------------------------

/// What must become of one file.
enum Expect {
    /// Recorded as failed with one of these codes and moved to `failed/`; nothing of it stored.
    Failed(&'static [&'static str]),
    /// Loaded and archived to `processed/`: exactly these events (id, line) and rejections.
    Loaded {
        accepted: Vec<(Uuid, i64)>,
        rejected: Vec<(i64, &'static str, Raw)>,
    },
}

/// What `rejected_rows.raw_line` must hold.
enum Raw {
    /// Exactly this text.
    Exact(String),
    /// A shortened prefix of this text: an over-long record is not stored whole.
    PrefixOf(String),
}

/// One file of the corpus.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

/// One minute ago, RFC 3339: valid, and far from the future-timestamp limit.
fn recent() -> String {
    (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A valid purchase in canonical column order with a fresh id.
fn valid_row() -> (Uuid, String) {
    let id = Uuid::new_v4();
    (id, format!("{id},42,7,purchase,19.99,{}", recent()))
}

/// `N` valid rows, each with its own id.
fn valid_rows<const N: usize>() -> [(Uuid, String); N] {
    std::array::from_fn(|_| valid_row())
}

fn loaded(accepted: &[(Uuid, i64)], rejected: Vec<(i64, &'static str, Raw)>) -> Expect {
    Expect::Loaded {
        accepted: accepted.to_vec(),
        rejected,
    }
}

/// The corpus, with its documented outcomes. Line numbers count the header as line 1 and give the
/// line a record starts on.
fn corpus() -> Vec<Case> {
    let ts = recent();
    let mut cases = Vec::new();

    // No header line at all.
    cases.push(Case {
        name: "empty.csv",
        bytes: Vec::new(),
        expect: Expect::Failed(&["empty_file"]),
    });

    // A valid file that happens to hold no rows.
    cases.push(Case {
        name: "header_only.csv",
        bytes: format!("{HEADER_LINE}\n").into_bytes(),
        expect: loaded(&[], vec![]),
    });

    // A contract column is absent: the rows cannot be read at all.
    let [(_, a)] = valid_rows();
    let without_timestamp = a.rsplit_once(',').unwrap().0;
    cases.push(Case {
        name: "missing_column.csv",
        bytes: format!("event_id,user_id,product_id,event_type,price\n{without_timestamp}\n")
            .into_bytes(),
        expect: Expect::Failed(&["header_missing_column"]),
    });

    // A misspelt column name is a missing column (and, ignored, an unknown extra one).
    let [(_, a)] = valid_rows();
    cases.push(Case {
        name: "misspelt_header.csv",
        bytes: format!("event_id,userid,product_id,event_type,price,event_timestamp\n{a}\n")
            .into_bytes(),
        expect: Expect::Failed(&["header_missing_column"]),
    });

    // A column named twice: which one holds the price?
    let [(_, a)] = valid_rows();
    cases.push(Case {
        name: "duplicate_column.csv",
        bytes: format!("{HEADER_LINE},price\n{a},1.00\n").into_bytes(),
        expect: Expect::Failed(&["header_duplicate_column"]),
    });

    // A duplicated column whose name holds NUL bytes: the failure message quotes the name, and
    // must still be storable in a `text` column.
    let [(_, a)] = valid_rows();
    cases.push(Case {
        name: "nul_in_header.csv",
        bytes: format!("{HEADER_LINE},x\0y,x\0y\n{a},1,2\n").into_bytes(),
        expect: Expect::Failed(&["header_duplicate_column"]),
    });

    // A header longer than the record cap is not buffered.
    cases.push(Case {
        name: "header_too_long.csv",
        bytes: format!("{}{HEADER_LINE}\n", "h".repeat(1 << 20)).into_bytes(),
        expect: Expect::Failed(&["header_too_long"]),
    });

    // Not a text file at all (deterministic, so the code that comes out is always the same).
    let mut rng = SmallRng::seed_from_u64(0x00ba_d1b9);
    let garbage: Vec<u8> = (0..16 * 1024).map(|_| rng.random()).collect();
    cases.push(Case {
        name: "binary_garbage.csv",
        bytes: garbage,
        expect: Expect::Failed(&event_contract::ReadError::UNREADABLE_CODES),
    });

    // Columns are matched by name, not position.
    let ids: [Uuid; 3] = std::array::from_fn(|_| Uuid::new_v4());
    let mut bytes = "event_timestamp,price,event_type,product_id,user_id,event_id\n".to_owned();
    for id in ids {
        writeln!(bytes, "{ts},19.99,purchase,7,42,{id}").unwrap();
    }
    cases.push(Case {
        name: "reordered_columns.csv",
        bytes: bytes.into_bytes(),
        expect: loaded(&[(ids[0], 2), (ids[1], 3), (ids[2], 4)], vec![]),
    });

    // An unknown column is ignored, its values are not even checked for UTF-8.
    let [(a, row_a), (b, row_b)] = valid_rows();
    let mut bytes = format!("{HEADER_LINE},note\n{row_a},free text\n{row_b},").into_bytes();
    bytes.extend_from_slice(b"\xff\xfe not UTF-8\n");
    cases.push(Case {
        name: "extra_column.csv",
        bytes,
        expect: loaded(&[(a, 2), (b, 3)], vec![]),
    });

    // Quoted fields may hold commas and quotes, but not a line break: no contract field has one,
    // so a quote still open at the end of a line is a stray quote. That line is rejected and the
    // next line is read as a record of its own (standard CSV would join them).
    let [(c, row_c)] = valid_rows();
    let open_note = format!("{},\"a,b", valid_row().1);
    let open_type = format!("{},42,7,\"vi", Uuid::new_v4());
    let type_tail = format!("ew\",,{ts},plain");
    cases.push(Case {
        name: "quoted_newlines.csv",
        bytes: format!(
            "{HEADER_LINE},note\n{open_note}\nc\"\n{open_type}\n{type_tail}\n{row_c},\"say \"\"hi\"\"\"\n"
        )
        .into_bytes(),
        expect: loaded(
            &[(c, 6)],
            vec![
                (2, "unterminated_quote", Raw::Exact(open_note)),
                (3, "wrong_field_count", Raw::Exact("c\"".to_owned())),
                (4, "unterminated_quote", Raw::Exact(open_type)),
                (5, "wrong_field_count", Raw::Exact(type_tail)),
            ],
        ),
    });

    // A header with a quote still open at its line end fails the file.
    let [(_, a)] = valid_rows();
    cases.push(Case {
        name: "header_open_quote.csv",
        bytes: format!("\"{HEADER_LINE}\n{a}\n").into_bytes(),
        expect: Expect::Failed(&["header_unterminated_quote"]),
    });

    // Windows line endings.
    let [(a, row_a), (c, row_c)] = valid_rows();
    let bad_uuid = format!("not-a-uuid,42,7,view,,{ts}");
    cases.push(Case {
        name: "crlf.csv",
        bytes: format!("{HEADER_LINE}\r\n{row_a}\r\n{bad_uuid}\r\n{row_c}\r\n").into_bytes(),
        expect: loaded(
            &[(a, 2), (c, 4)],
            vec![(3, "bad_uuid", Raw::Exact(bad_uuid))],
        ),
    });

    // Classic Mac line endings (a lone CR ends a record, so it ends a line too): two rejected
    // rows must not share a line number.
    let [(a, row_a), (e, row_e)] = valid_rows();
    let bad_uuid = format!("not-a-uuid,42,7,view,,{ts}");
    let zero_user = format!("{},0,7,view,,{ts}", Uuid::new_v4());
    cases.push(Case {
        name: "cr_only.csv",
        bytes: format!("{HEADER_LINE}\r{row_a}\r{bad_uuid}\r{zero_user}\r{row_e}\r").into_bytes(),
        expect: loaded(
            &[(a, 2), (e, 5)],
            vec![
                (3, "bad_uuid", Raw::Exact(bad_uuid)),
                (4, "bad_integer", Raw::Exact(zero_user)),
            ],
        ),
    });

    // A UTF-8 byte-order mark before the header, as spreadsheet exports write it.
    let [(a, row_a), (b, row_b)] = valid_rows();
    cases.push(Case {
        name: "bom.csv",
        bytes: format!("\u{feff}{HEADER_LINE}\n{row_a}\n{row_b}\n").into_bytes(),
        expect: loaded(&[(a, 2), (b, 3)], vec![]),
    });

    // Invalid UTF-8 in a contract field rejects the row; the raw line is stored lossily.
    let [(a, row_a), (d, row_d)] = valid_rows();
    let latin1 = [
        format!("{},42,7,vi", Uuid::new_v4()).as_bytes(),
        b"\xff",
        format!("ew,,{ts}").as_bytes(),
    ]
    .concat();
    let mut bytes = format!("{HEADER_LINE}\n{row_a}\n").into_bytes();
    bytes.extend_from_slice(&latin1);
    bytes.extend_from_slice(format!("\n{row_d}\n").as_bytes());
    cases.push(Case {
        name: "invalid_utf8_row.csv",
        bytes,
        expect: loaded(
            &[(a, 2), (d, 4)],
            vec![(
                3,
                "not_utf8",
                Raw::Exact(String::from_utf8_lossy(&latin1).into_owned()),
            )],
        ),
    });

    // A 1 MiB record between valid ones: rejected without being buffered, the rest unaffected.
    let [(a, row_a), (b, row_b), (d, row_d), (e, row_e)] = valid_rows();
    let huge = format!(
        "{},42,7,purchase,{},{ts}",
        Uuid::new_v4(),
        "9".repeat(1 << 20)
    );
    cases.push(Case {
        name: "long_line.csv",
        bytes: format!("{HEADER_LINE}\n{row_a}\n{row_b}\n{huge}\n{row_d}\n{row_e}\n").into_bytes(),
        expect: loaded(
            &[(a, 2), (b, 3), (d, 5), (e, 6)],
            vec![(4, "line_too_long", Raw::PrefixOf(huge))],
        ),
    });

    // The last record needs no line terminator.
    let [(a, row_a), (b, row_b)] = valid_rows();
    cases.push(Case {
        name: "no_trailing_newline.csv",
        bytes: format!("{HEADER_LINE}\n{row_a}\n{row_b}").into_bytes(),
        expect: loaded(&[(a, 2), (b, 3)], vec![]),
    });

    // NUL bytes are valid UTF-8 but cannot be stored in `text`: the raw line loses them.
    let [(a, row_a), (e, row_e)] = valid_rows();
    let nul_type = format!("{},42,7,vi\0ew,,{ts}", Uuid::new_v4());
    let nul_id = format!("{}\0,42,7,view,,{ts}", Uuid::new_v4());
    cases.push(Case {
        name: "nul_bytes.csv",
        bytes: format!("{HEADER_LINE}\n{row_a}\n{nul_type}\n{nul_id}\n{row_e}\n").into_bytes(),
        expect: loaded(
            &[(a, 2), (e, 5)],
            vec![
                (
                    3,
                    "unknown_event_type",
                    Raw::Exact(nul_type.replace('\0', "")),
                ),
                (4, "bad_uuid", Raw::Exact(nul_id.replace('\0', ""))),
            ],
        ),
    });

    cases
}

#[tokio::test]
async fn every_malformed_file_gets_its_documented_outcome_and_the_service_stays_up() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let cases = corpus();
    let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    // Not event files: hidden names are temporary files, other extensions are not ours.
    let (_, row) = valid_row();
    let ignored = format!("{HEADER_LINE}\n{row}\n");
    std::fs::write(input.join(".hidden.csv"), &ignored).unwrap();
    std::fs::write(input.join("notes.txt"), &ignored).unwrap();
    let ingestor = Ingestor::spawn(&ingestor_url(&db), input, &[]);
    // Act
    for case in &cases {
        deliver(input, case.name, &case.bytes);
    }
    wait_for_files(&db, &ingestor, input, &names, Duration::from_secs(60)).await;
    // Assert
    let client = db.client().await;
    let mut table = Vec::new();
    for case in &cases {
        table.push(assert_case(&client, input, case).await);
    }
    eprintln!("corpus outcomes:\n{}", table.join("\n"));
    let ledger: i64 = client
        .query_one("SELECT count(*) FROM ingest_files", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger as usize, cases.len(), "one ledger entry per file");
    assert!(input.join(".hidden.csv").exists() && input.join("notes.txt").exists());
    assert_eq!(ingestor.get("/readyz").0, 200, "ready after the corpus");
    assert_eq!(ingestor.get("/healthz").0, 200, "healthy after the corpus");
    let exit = ingestor.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?}");
}

/// Checks one case against the database and the directories; returns its line of the outcome
/// table.
async fn assert_case(client: &Client, input: &Path, case: &Case) -> String {
    let name = case.name;
    let entry = ledger_entry(client, name).await;
    let rejections = rejected_rows(client, entry.file_id).await;
    let events = events_of(client, entry.file_id).await;
    match &case.expect {
        Expect::Failed(codes) => {
            assert_eq!(entry.status, "failed", "{name}: {entry:?}");
            let reason = entry.failure_reason.as_deref().unwrap_or_default();
            assert!(codes.contains(&reason), "{name}: {reason} not in {codes:?}");
            assert!(rejections.is_empty(), "{name}: {rejections:?}");
            assert!(events.is_empty(), "{name}: a failed file stored events");
            assert!(
                input.join("failed").join(name).is_file(),
                "{name} in failed/"
            );
        }
        Expect::Loaded { accepted, rejected } => {
            let counts = (
                entry.lines,
                entry.accepted,
                entry.duplicates,
                entry.rejected,
            );
            let (a, r) = (accepted.len() as i64, rejected.len() as i64);
            assert_eq!(entry.status, "loaded", "{name}: {entry:?}");
            assert_eq!(
                counts,
                (a + r, a, 0, r),
                "{name}: lines/accepted/dup/rejected"
            );
            let expected: BTreeMap<Uuid, i64> = accepted.iter().copied().collect();
            assert_eq!(events, expected, "{name}: events and their lines");
            let got: Vec<(i64, &str)> = rejections
                .iter()
                .map(|(line, reason, _)| (*line, reason.as_str()))
                .collect();
            let want: Vec<(i64, &str)> = rejected.iter().map(|(l, r, _)| (*l, *r)).collect();
            assert_eq!(got, want, "{name}: rejected lines and reasons");
            for ((line, _, stored), (_, _, raw)) in rejections.iter().zip(rejected) {
                match raw {
                    Raw::Exact(text) => assert_eq!(stored, text, "{name}: raw line {line}"),
                    Raw::PrefixOf(text) => assert!(
                        !stored.is_empty() && stored.len() < 4096 && text.starts_with(stored),
                        "{name}: raw line {line} is not a short prefix ({} bytes)",
                        stored.len()
                    ),
                }
            }
            assert!(
                input.join("processed").join(name).is_file(),
                "{name} in processed/"
            );
        }
    }
    assert!(
        !input.join(name).exists(),
        "{name} left in the input directory"
    );
    format!(
        "  {name:<24} {:<7} {:<24} lines={} accepted={} rejected={} [{}]",
        entry.status,
        entry.failure_reason.as_deref().unwrap_or("-"),
        entry.lines,
        entry.accepted,
        entry.rejected,
        rejections
            .iter()
            .map(|(line, reason, _)| format!("{line}:{reason}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

// ---------------------------------------------------------------------------------------------
// Size, removal, error budget, extra-column policy.
// ---------------------------------------------------------------------------------------------

/// The memory bound the service promises: a few chunks in flight whatever the file size.
const PEAK_RSS_LIMIT: u64 = 128 * 1024 * 1024;

/// Size of the big file: 200 MB (about 2.2 million rows) in release builds. A debug build of
/// the ingestor took about two minutes for that on a 2-CPU machine, so debug runs use 100 MB:
/// the memory bound is the same for any size past a few chunks, only the runtime differs.
const BIG_FILE_BYTES: u64 = if cfg!(debug_assertions) {
    100 * 1000 * 1000
} else {
    200 * 1000 * 1000
};

#[tokio::test]
async fn a_200_megabyte_file_loads_with_bounded_memory() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let ingestor = Ingestor::spawn(&ingestor_url(&db), dir.path(), &[]);
    let staging = dir.path().join(".big.csv.tmp");
    let rows = write_valid_file(&staging, BIG_FILE_BYTES);
    // Act
    let started = Instant::now();
    std::fs::rename(&staging, dir.path().join("big.csv")).unwrap();
    wait_for_files(
        &db,
        &ingestor,
        dir.path(),
        &["big.csv"],
        Duration::from_secs(300),
    )
    .await;
    let took = started.elapsed();
    // Assert
    let peak = peak_rss_bytes(ingestor.pid());
    eprintln!(
        "{rows} rows loaded in {took:.1?}; ingestor peak RSS {} MiB",
        peak >> 20
    );
    let client = db.client().await;
    let entry = ledger_entry(&client, "big.csv").await;
    assert_eq!(entry.status, "loaded", "{entry:?}");
    assert_eq!(
        (
            entry.lines,
            entry.accepted,
            entry.duplicates,
            entry.rejected
        ),
        (rows as i64, rows as i64, 0, 0)
    );
    let stored: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, rows as i64);
    assert!(
        peak < PEAK_RSS_LIMIT,
        "peak RSS {} MiB is over the {} MiB bound",
        peak >> 20,
        PEAK_RSS_LIMIT >> 20
    );
    assert_eq!(ingestor.get("/readyz").0, 200);
}

#[tokio::test]
async fn a_file_removed_while_being_read_never_wedges_the_service() {
    // Arrange: two ~20 MB files. The ingestor reads a file twice through one descriptor: once
    // to learn its identity (content hash), then again for its rows.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().canonicalize().unwrap();
    let ingestor = Ingestor::spawn(&ingestor_url(&db), &input, &[]);
    let pid = ingestor.pid();
    let late_rows = write_valid_file(&input.join(".late.csv.tmp"), 20 * 1000 * 1000);
    let early_rows = write_valid_file(&input.join(".early.csv.tmp"), 20 * 1000 * 1000);

    // Act 1: delete a file a third of the way into the rows pass. Linux keeps reading an open,
    // unlinked file, so it must load whole, exactly as it was when the pass began.
    let late = input.join("late.csv");
    let size = std::fs::metadata(input.join(".late.csv.tmp"))
        .unwrap()
        .len();
    let before = bytes_read_by(pid);
    std::fs::rename(input.join(".late.csv.tmp"), &late).unwrap();
    // Once it has read the whole file once plus a third, an open descriptor short of the end
    // belongs to the rows pass.
    let late_offset = wait_until_reading(pid, &late, before + size + size / 3).await;
    std::fs::remove_file(&late).unwrap();
    wait_for_files(
        &db,
        &ingestor,
        &input,
        &["late.csv"],
        Duration::from_secs(120),
    )
    .await;

    // Act 2: delete a file as soon as any pass is partway through it (usually the identity pass).
    // Both passes read the descriptor opened before the deletion, so it loads whole; a file
    // deleted before it was opened would leave nothing, which the assertions accept as well.
    let early = input.join("early.csv");
    std::fs::rename(input.join(".early.csv.tmp"), &early).unwrap();
    let early_offset = wait_until_reading(pid, &early, 0).await;
    std::fs::remove_file(&early).unwrap();
    // The service goes on with the next file.
    let (id, row) = valid_row();
    deliver(
        &input,
        "after.csv",
        format!("{HEADER_LINE}\n{row}\n").as_bytes(),
    );
    wait_for_files(
        &db,
        &ingestor,
        &input,
        &["after.csv"],
        Duration::from_secs(120),
    )
    .await;

    // Assert
    let client = db.client().await;
    let entry = ledger_entry(&client, "late.csv").await;
    assert_eq!(
        (entry.status.as_str(), entry.lines, entry.accepted),
        ("loaded", late_rows as i64, late_rows as i64),
        "deleted at byte {late_offset} of the rows pass"
    );
    let early_loaded = match ledger_entries(&client, "early.csv").await.as_slice() {
        [] => false,
        [entry] => {
            assert_eq!(entry.status, "loaded", "{entry:?}");
            assert_eq!(
                (entry.lines, entry.accepted),
                (early_rows as i64, early_rows as i64)
            );
            true
        }
        more => panic!("several ledger entries for one file: {more:?}"),
    };
    eprintln!(
        "late.csv deleted at byte {late_offset} of {size} in the rows pass: loaded whole; \
         early.csv deleted at byte {early_offset}: {}",
        if early_loaded {
            "loaded whole"
        } else {
            "nothing kept"
        }
    );
    let after = ledger_entry(&client, "after.csv").await;
    assert_eq!((after.status.as_str(), after.accepted), ("loaded", 1));
    assert_eq!(
        events_of(&client, after.file_id).await,
        BTreeMap::from([(id, 2)])
    );
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM events), \
                    (SELECT coalesce(sum(accepted), 0)::bigint FROM ingest_files \
                     WHERE status = 'loaded'), \
                    (SELECT count(*) FROM ingest_files WHERE status = 'loading')",
            &[],
        )
        .await
        .unwrap();
    let (events, accepted, loading): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(events, accepted, "events match the loaded ledger entries");
    let early_events = if early_loaded { early_rows } else { 0 };
    assert_eq!(
        events as u64,
        late_rows + early_events + 1,
        "never a partial file"
    );
    assert_eq!(loading, 0, "no entry left half-claimed");
    assert_eq!(ingestor.get("/readyz").0, 200);
    assert_eq!(ingestor.get("/healthz").0, 200);
}

#[tokio::test]
async fn one_stray_quote_in_200_rows_costs_one_row_and_199_load() {
    // Arrange: 200 valid rows; row 100 (line 101) opens a quoted field it never closes. Read as
    // standard CSV, that quote would run to the end of the file and swallow the 100 rows after
    // it into one rejected record.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let ts = recent();
    let mut file = format!("{HEADER_LINE}\n");
    let mut ids = Vec::new();
    let mut stray = String::new();
    for i in 0..200 {
        let id = Uuid::new_v4();
        if i == 99 {
            stray = format!("{id},\"42,7,purchase,19.99,{ts}");
            writeln!(file, "{stray}").unwrap();
        } else {
            ids.push(id);
            writeln!(file, "{id},42,7,purchase,19.99,{ts}").unwrap();
        }
    }
    std::fs::write(input.join("stray_quote.csv"), &file).unwrap();
    let expected = expected(&event_files(input));
    assert_eq!(
        (expected.lines, expected.unique_ids.len(), expected.rejected),
        (200, 199, 1),
        "the contract reads the file as 199 events and one rejection"
    );
    // Act
    let ingestor = Ingestor::spawn(&ingestor_url(&db), input, &[]);
    wait_for_files(
        &db,
        &ingestor,
        input,
        &["stray_quote.csv"],
        Duration::from_secs(60),
    )
    .await;
    // Assert
    assert_exact(&db, &expected).await;
    let client = db.client().await;
    let entry = ledger_entry(&client, "stray_quote.csv").await;
    assert_eq!(
        (
            entry.status.as_str(),
            entry.lines,
            entry.accepted,
            entry.duplicates,
            entry.rejected
        ),
        ("loaded", 200, 199, 0, 1)
    );
    assert_eq!(
        rejected_rows(&client, entry.file_id).await,
        [(101, "unterminated_quote".to_owned(), stray)]
    );
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 199, "every row but the stray one stored");
    assert!(input.join("processed/stray_quote.csv").is_file());
    let (_, metrics) = ingestor.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "ingestor_rows_rejected_total{reason=\"unterminated_quote\"} 1"),
        "the rejection is counted under its reason:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("ingestor_rows_rejected_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(ingestor.get("/readyz").0, 200);
    let exit = ingestor.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn names_swapped_after_the_scan_for_a_fifo_or_symlinks_are_refused_and_loading_goes_on() {
    // Arrange: four valid files, ready at start. The test holds the ingestors' presence lock
    // (as `ingestor reset` does), so the loader waits between its scan (which listed the four
    // names as regular files) and opening them, and meanwhile three of the names are swapped:
    // for a FIFO, for a symbolic link to a file outside the directory, and for a symbolic link
    // to /dev/zero.
    let db = TestDatabase::create().await;
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("incoming");
    std::fs::create_dir(&input).unwrap();
    let landed = std::time::SystemTime::now() - Duration::from_secs(600);
    let names = ["a.csv", "fifo.csv", "outside.csv", "zero.csv"];
    for name in names {
        let mut bytes = format!("{HEADER_LINE}\n");
        for _ in 0..20 {
            writeln!(bytes, "{}", valid_row().1).unwrap();
        }
        std::fs::write(input.join(name), bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(input.join(name))
            .unwrap()
            .set_modified(landed)
            .unwrap();
    }
    // The outside file: valid rows and a line that would be rejected, all of them secret.
    let outside = root.path().join("secret.csv");
    let secret_ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let mut secret = format!("{HEADER_LINE}\n");
    for id in &secret_ids {
        writeln!(secret, "{id},42,7,purchase,19.99,{}", recent()).unwrap();
    }
    secret.push_str("top-secret-line,not,a,valid,row\n");
    std::fs::write(&outside, &secret).unwrap();
    let expected = expected(&[input.join("a.csv")]);
    let client = db.client().await;
    let holder = db.client().await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&ingestor::store::presence::RUNNING_LOCK_KEY],
        )
        .await
        .unwrap();
    let ingestor = Ingestor::spawn(
        &ingestor_url(&db),
        &input,
        // One loader loop, so no other loop opens the files meanwhile.
        &[("INGESTOR_LOADERS", "1")],
    );
    // The loop logs this after its scan, before it opens anything.
    assert!(
        ingestor.wait_for_log("Loading waits until", Duration::from_secs(30)),
        "the loader did not wait for the presence lock: {:#?}",
        ingestor.log_lines()
    );

    // Act: swap the names, then let the loader go on.
    for name in ["fifo.csv", "outside.csv", "zero.csv"] {
        std::fs::remove_file(input.join(name)).unwrap();
    }
    let mkfifo = std::process::Command::new("mkfifo")
        .arg(input.join("fifo.csv"))
        .status()
        .unwrap();
    assert!(mkfifo.success(), "mkfifo failed");
    std::os::unix::fs::symlink(&outside, input.join("outside.csv")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", input.join("zero.csv")).unwrap();
    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&ingestor::store::presence::RUNNING_LOCK_KEY],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !input.join("processed/a.csv").exists() || refusals(&ingestor).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "a.csv not loaded or not every swapped name refused:\n{}",
            ingestor.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert: the names were refused when opened, after the scan (not by the scan itself).
    assert!(
        !ingestor
            .log_lines()
            .iter()
            .any(|l| l.contains("File refused") && l.contains("listed so by the scan")),
        "a swapped name was refused by the scan, so the swap came before it:\n{}",
        ingestor.log_lines().join("\n")
    );
    // Assert: the other file loaded exactly; nothing of the outside file is stored anywhere.
    assert_exact(&db, &expected).await;
    let (secret_events, secret_rejections): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM events WHERE event_id = ANY($1)), \
                 (SELECT count(*) FROM rejected_rows WHERE raw_line LIKE '%top-secret%' \
                  OR raw_line LIKE ANY (SELECT '%' || id::text || '%' FROM unnest($1::uuid[]) id))",
                &[&secret_ids],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (secret_events, secret_rejections),
        (0, 0),
        "the outside file's lines stored"
    );
    let ledger: Vec<String> = client
        .query("SELECT file_name FROM ingest_files ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ledger, ["a.csv"], "no ledger entry for a refused name");
    // The operator signal names each refused file and what it held.
    assert_refused_once(
        &ingestor,
        &[
            ("fifo.csv", "not_regular_file"),
            ("outside.csv", "symlink"),
            ("zero.csv", "symlink"),
        ],
    );
    // The names are left as they were, the outside file untouched; the loader is not hung.
    assert!(std::fs::symlink_metadata(input.join("fifo.csv"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(std::fs::symlink_metadata(input.join("zero.csv"))
        .unwrap()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), secret);
    assert_eq!(ingestor.get("/readyz").0, 200);
    let exit = ingestor.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn names_holding_a_fifo_symlinks_or_a_directory_before_the_scan_are_refused_once() {
    // Arrange: before the ingestor starts, a valid file and four event file names that hold no
    // regular file: a FIFO (no writer: opening it for reading would block), a symbolic link to
    // a file outside the directory, one to /dev/zero, and a directory.
    let db = TestDatabase::create().await;
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("incoming");
    std::fs::create_dir(&input).unwrap();
    let originals = root.path().join("originals");
    std::fs::create_dir(&originals).unwrap();
    // Written aside, then copied in: the expectation is read from the copy kept aside.
    let valid_file = |name: &str| {
        let mut bytes = format!("{HEADER_LINE}\n");
        for _ in 0..20 {
            writeln!(bytes, "{}", valid_row().1).unwrap();
        }
        std::fs::write(originals.join(name), &bytes).unwrap();
        std::fs::write(input.join(name), bytes).unwrap();
    };
    valid_file("a.csv");
    let outside = root.path().join("secret.csv");
    let secret = format!("{HEADER_LINE}\ntop-secret-line,not,a,valid,row\n");
    std::fs::write(&outside, &secret).unwrap();
    let mkfifo = std::process::Command::new("mkfifo")
        .arg(input.join("fifo.csv"))
        .status()
        .unwrap();
    assert!(mkfifo.success(), "mkfifo failed");
    std::os::unix::fs::symlink(&outside, input.join("outside.csv")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", input.join("zero.csv")).unwrap();
    std::fs::create_dir(input.join("folder.csv")).unwrap();

    // Act: start, then deliver a second file once the first scans reported the names.
    let ingestor = Ingestor::spawn(&ingestor_url(&db), &input, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !input.join("processed/a.csv").exists() || refusals(&ingestor).len() < 4 {
        assert!(
            Instant::now() < deadline,
            "a.csv not loaded or not every name refused:\n{}",
            ingestor.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    valid_file("b.csv");
    let expected = expected(&[originals.join("a.csv"), originals.join("b.csv")]);
    // (Not `wait_for_ledger`: it takes the link to the outside file for a file still waiting.)
    while !input.join("processed/b.csv").exists() {
        assert!(
            Instant::now() < deadline,
            "b.csv not loaded:\n{}",
            ingestor.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert: both valid files loaded exactly; the refused names were reported once each
    // (not at every scan since), nothing of the outside file is stored, nothing is hung.
    assert_exact(&db, &expected).await;
    assert_refused_once(
        &ingestor,
        &[
            ("fifo.csv", "not_regular_file"),
            ("folder.csv", "not_regular_file"),
            ("outside.csv", "symlink"),
            ("zero.csv", "symlink"),
        ],
    );
    let client = db.client().await;
    let secret_rejections: i64 = client
        .query_one(
            "SELECT count(*) FROM rejected_rows WHERE raw_line LIKE '%top-secret%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(secret_rejections, 0, "the outside file's line stored");
    assert!(std::fs::symlink_metadata(input.join("fifo.csv"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(std::fs::symlink_metadata(input.join("outside.csv"))
        .unwrap()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), secret);
    assert_eq!(ingestor.get("/readyz").0, 200);
    let exit = ingestor.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?}");
}

/// The "File refused" log lines name exactly `expected` (file, kind), sorted by file, one line
/// each, and `ingestor_files_refused_total` counts as many of each kind.
fn assert_refused_once(ingestor: &Ingestor, expected: &[(&str, &str)]) {
    let mut refused = refusals(ingestor);
    refused.sort();
    let expected_pairs: Vec<(String, String)> = expected
        .iter()
        .map(|(file, kind)| ((*file).to_owned(), (*kind).to_owned()))
        .collect();
    assert_eq!(refused, expected_pairs);
    let (_, metrics) = ingestor.get("/metrics");
    for kind in ["not_regular_file", "symlink"] {
        let count = expected.iter().filter(|(_, k)| *k == kind).count();
        let line = format!("ingestor_files_refused_total{{kind=\"{kind}\"}} {count}");
        assert!(metrics.lines().any(|l| l == line), "{line} missing");
    }
}

/// The (file, kind) of every "File refused" log line.
fn refusals(ingestor: &Ingestor) -> Vec<(String, String)> {
    ingestor
        .log_lines()
        .iter()
        .filter(|line| line.contains("File refused"))
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                event["file"].as_str().unwrap_or_default().to_owned(),
                event["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn failed_ledger_entries_carry_when_the_file_landed() {
    // Arrange: two files that fail as a whole, each by another path: one is unreadable (its
    // claim turns into the failed entry), one is over the error budget (its claim is rolled
    // back and the failed entry inserted anew). Each landed at a known time an hour ago.
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let ts = recent();
    let mut over_budget = format!("{HEADER_LINE}\n");
    for _ in 0..10 {
        writeln!(over_budget, "{},42,7,purchase,-1,{ts}", Uuid::new_v4()).unwrap();
    }
    let landed = [
        ("empty.csv", Vec::new(), 3_600),
        ("over_budget.csv", over_budget.into_bytes(), 3_540),
    ];
    for (name, bytes, ago) in &landed {
        let path = input.join(name);
        std::fs::write(&path, bytes).unwrap();
        let at = std::time::SystemTime::now() - Duration::from_secs(*ago);
        let whole_seconds = std::time::UNIX_EPOCH
            + Duration::from_secs(at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(whole_seconds)
            .unwrap();
    }
    let mtimes: Vec<std::time::SystemTime> = landed
        .iter()
        .map(|(name, _, _)| {
            std::fs::metadata(input.join(name))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    // Act
    let ingestor = Ingestor::spawn(
        &ingestor_url(&db),
        input,
        &[("INGESTOR_MAX_REJECT_RATIO", "0.1")],
    );
    let names = ["empty.csv", "over_budget.csv"];
    wait_for_files(&db, &ingestor, input, &names, Duration::from_secs(60)).await;
    // Assert
    let client = db.client().await;
    for ((name, _, _), mtime) in landed.iter().zip(mtimes) {
        let row = client
            .query_one(
                "SELECT status, failure_reason, landed_at FROM ingest_files WHERE file_name = $1",
                &[name],
            )
            .await
            .unwrap();
        let (status, reason, landed_at): (String, String, Option<std::time::SystemTime>) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(status, "failed", "{name}");
        assert_eq!(
            reason,
            if *name == "empty.csv" {
                "empty_file"
            } else {
                "error_budget_exceeded"
            }
        );
        assert_eq!(
            landed_at,
            Some(mtime),
            "{name}: landed_at is its modification time"
        );
    }
    assert_eq!(ingestor.get("/readyz").0, 200);
}

#[tokio::test]
async fn error_budget_fails_a_file_with_too_many_rejections() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let ingestor = Ingestor::spawn(
        &ingestor_url(&db),
        input,
        &[("INGESTOR_MAX_REJECT_RATIO", "0.1")],
    );
    let ts = recent();
    // Half of 10 rows bad: far over a 10% budget.
    let mut half_bad = format!("{HEADER_LINE}\n");
    let mut half_bad_ids = Vec::new();
    for i in 0..10 {
        let id = Uuid::new_v4();
        half_bad_ids.push(id);
        let price = if i % 2 == 0 { "19.99" } else { "-1" };
        writeln!(half_bad, "{id},42,7,purchase,{price},{ts}").unwrap();
    }
    // One of 20 rows bad: 5%, within budget.
    let mut few_bad = format!("{HEADER_LINE}\n");
    for i in 0..20 {
        let price = if i == 7 { "-1" } else { "19.99" };
        writeln!(few_bad, "{},42,7,purchase,{price},{ts}", Uuid::new_v4()).unwrap();
    }
    // Act
    deliver(input, "half_bad.csv", half_bad.as_bytes());
    deliver(input, "few_bad.csv", few_bad.as_bytes());
    let names = ["half_bad.csv", "few_bad.csv"];
    wait_for_files(&db, &ingestor, input, &names, Duration::from_secs(60)).await;
    // Assert
    let client = db.client().await;
    let failed = ledger_entry(&client, "half_bad.csv").await;
    assert_eq!(failed.status, "failed", "{failed:?}");
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("error_budget_exceeded")
    );
    assert!(input.join("failed/half_bad.csv").is_file());
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE event_id = ANY($1)",
            &[&half_bad_ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "no row of the failed file stored");
    assert!(rejected_rows(&client, failed.file_id).await.is_empty());
    let ok = ledger_entry(&client, "few_bad.csv").await;
    assert_eq!(
        (ok.status.as_str(), ok.lines, ok.accepted, ok.rejected),
        ("loaded", 20, 19, 1)
    );
    let rejections = rejected_rows(&client, ok.file_id).await;
    assert_eq!(
        rejections
            .iter()
            .map(|(l, r, _)| (*l, r.as_str()))
            .collect::<Vec<_>>(),
        [(9, "bad_price")]
    );
    let all_rejections: i64 = client
        .query_one("SELECT count(*) FROM rejected_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        all_rejections, 1,
        "only the loaded file's rejection is kept"
    );
    assert!(input.join("processed/few_bad.csv").is_file());
    assert_eq!(ingestor.get("/readyz").0, 200);
}

#[tokio::test]
async fn extra_columns_policy_fail_fails_the_file() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let ingestor = Ingestor::spawn(
        &ingestor_url(&db),
        input,
        &[("INGESTOR_EXTRA_COLUMNS", "fail")],
    );
    let [(_, a), (b, row_b), (c, row_c)] = valid_rows();
    let reordered = {
        let fields: Vec<&str> = row_c.split(',').rev().collect();
        fields.join(",")
    };
    let reversed_header: Vec<&str> = HEADER_LINE.split(',').rev().collect();
    // Act
    deliver(
        input,
        "extra.csv",
        format!("{HEADER_LINE},note\n{a},hello\n").as_bytes(),
    );
    deliver(
        input,
        "canonical.csv",
        format!("{HEADER_LINE}\n{row_b}\n").as_bytes(),
    );
    deliver(
        input,
        "reordered.csv",
        format!("{}\n{reordered}\n", reversed_header.join(",")).as_bytes(),
    );
    let names = ["extra.csv", "canonical.csv", "reordered.csv"];
    wait_for_files(&db, &ingestor, input, &names, Duration::from_secs(60)).await;
    // Assert
    let client = db.client().await;
    let extra = ledger_entry(&client, "extra.csv").await;
    assert_eq!(
        (extra.status.as_str(), extra.failure_reason.as_deref()),
        ("failed", Some("header_unknown_column"))
    );
    assert!(input.join("failed/extra.csv").is_file());
    for (name, id) in [("canonical.csv", b), ("reordered.csv", c)] {
        let entry = ledger_entry(&client, name).await;
        assert_eq!(
            (entry.status.as_str(), entry.accepted),
            ("loaded", 1),
            "{name}"
        );
        assert_eq!(
            events_of(&client, entry.file_id).await,
            BTreeMap::from([(id, 2)])
        );
    }
    let stored: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 2, "nothing of the failed file stored");
    assert_eq!(ingestor.get("/readyz").0, 200);
}

// ---------------------------------------------------------------------------------------------
// The read path against the contract, for any bytes.
// ---------------------------------------------------------------------------------------------

/// A record's line and, when rejected, the reason code.
type RowSummary = (u64, Option<&'static str>);

/// Runs `read_rows` on `bytes` like the loader does (on its own thread, draining the channel);
/// returns the rows in line order and how reading ended (identity, or the unreadable code).
fn through_pipeline(
    bytes: &[u8],
    options: ReadOptions,
) -> (Vec<RowSummary>, Result<FileIdentity, &'static str>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.csv");
    std::fs::write(&path, bytes).unwrap();
    let (sender, mut receiver) = tokio::sync::mpsc::channel(2);
    let file = ingestor::source::reader::open(&path).unwrap().file;
    let reader = std::thread::spawn(move || read_rows(file, options, &sender));
    let mut rows = Vec::new();
    let mut end = None;
    while let Some(message) = receiver.blocking_recv() {
        assert!(end.is_none(), "a message after the end");
        match message {
            ReadMessage::Chunk(chunk) => {
                let len = chunk.events.len() + chunk.rejections.len();
                assert!(
                    (1..=options.chunk_rows).contains(&len),
                    "chunk of {len} rows"
                );
                rows.extend(chunk.events.iter().map(|e| (e.line, None)));
                for rejected in &chunk.rejections {
                    let text = format!("{}{}", rejected.raw, rejected.message);
                    assert!(!text.contains('\0'), "NUL in a stored rejection: {text:?}");
                    rows.push((rejected.line, Some(rejected.reason.code())));
                }
            }
            ReadMessage::End(ReadEnd::Unreadable(failure)) => {
                let message = failure.to_string();
                assert!(
                    !message.contains('\0'),
                    "NUL in a stored failure: {message:?}"
                );
                end = Some(Err(failure.code()));
            }
            ReadMessage::End(ReadEnd::Done(identity)) => end = Some(Ok(identity)),
            ReadMessage::End(ReadEnd::Interrupted(e)) => {
                panic!("reading a local file broke off: {e}")
            }
        }
    }
    reader.join().expect("read_rows panicked");
    rows.sort_unstable();
    (rows, end.expect("the reader ended without saying how"))
}

/// The contract's own reading of the same bytes: every record in order, or the unreadable code.
fn through_contract(bytes: &[u8], options: ReadOptions) -> Result<Vec<RowSummary>, &'static str> {
    let ctx = ValidationContext {
        now: Utc::now(),
        max_future_skew: options.max_future_skew,
    };
    let reader = EventReader::with_max_record_bytes(
        bytes,
        ctx,
        options.extra_columns,
        options.max_line_bytes,
    )
    .map_err(|e| e.code())?;
    Ok(reader
        .map(|row| {
            let row = row.expect("reading from memory cannot fail");
            (row.line, row.outcome.err().map(|r| r.reason.code()))
        })
        .collect())
}

fn pipeline_agrees_with_contract(bytes: &[u8], options: ReadOptions) -> Result<(), TestCaseError> {
    let (rows, end) = through_pipeline(bytes, options);
    match through_contract(bytes, options) {
        Err(code) => {
            prop_assert_eq!(end, Err(code));
            prop_assert!(rows.is_empty());
        }
        Ok(expected) => {
            let identity = FileIdentity {
                size: bytes.len() as u64,
                hash: *blake3::hash(bytes).as_bytes(),
            };
            prop_assert_eq!(end, Ok(identity));
            // Line numbers are the key of `rejected_rows`: each record must have its own.
            prop_assert!(
                expected.windows(2).all(|w| w[0].0 < w[1].0) && expected.iter().all(|r| r.0 >= 2),
                "line numbers do not strictly increase after the header: {:?}",
                expected
            );
            prop_assert_eq!(rows, expected);
        }
    }
    Ok(())
}

fn read_options() -> impl Strategy<Value = ReadOptions> {
    (
        prop_oneof![Just(128usize), Just(512), Just(DEFAULT_MAX_RECORD_BYTES)],
        1..6usize,
        any::<bool>(),
    )
        .prop_map(|(max_line_bytes, chunk_rows, fail)| ReadOptions {
            max_line_bytes,
            extra_columns: if fail {
                ExtraColumnPolicy::Fail
            } else {
                ExtraColumnPolicy::Ignore
            },
            max_future_skew: chrono::Duration::minutes(5),
            chunk_rows,
        })
}

/// A piece of a file body: valid rows, CSV punctuation soup, or noise.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    let soup = prop::sample::select(vec![
        b',', b'"', b'\r', b'\n', b'\0', 0xEF, 0xBB, 0xBF, 0xFF, b'a', b'1', b' ',
    ]);
    prop_oneof![
        3 => (any::<u128>(), 0..4usize).prop_map(|(n, kind)| {
            let (event_type, price) = [("view", ""), ("add_to_cart", "5.00"),
                ("remove_from_cart", "0"), ("purchase", "999999.99")][kind];
            format!("{},1,2,{event_type},{price},{}\n", Uuid::from_u128(n), recent()).into_bytes()
        }),
        2 => prop::collection::vec(soup, 0..24),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn header_then_fragments() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        Just(format!("{HEADER_LINE}\n")),
        Just(format!("{HEADER_LINE},note\n")),
        Just(format!("\u{feff}{HEADER_LINE}\r\n")),
        Just(format!("{HEADER_LINE}\r")),
    ];
    (header, prop::collection::vec(fragment(), 0..24)).prop_map(|(header, fragments)| {
        let mut bytes = header.into_bytes();
        bytes.extend(fragments.concat());
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_read_like_the_contract_reads_them(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        options in read_options(),
    ) {
        pipeline_agrees_with_contract(&bytes, options)?;
    }

    #[test]
    fn arbitrary_rows_after_a_valid_header_read_like_the_contract_reads_them(
        bytes in header_then_fragments(),
        options in read_options(),
    ) {
        pipeline_agrees_with_contract(&bytes, options)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers of this module.
// ---------------------------------------------------------------------------------------------

/// A file's ledger entry.
#[derive(Debug)]
struct LedgerEntry {
    file_id: i64,
    status: String,
    failure_reason: Option<String>,
    lines: i64,
    accepted: i64,
    duplicates: i64,
    rejected: i64,
}

/// Every ledger entry recorded under `name`.
async fn ledger_entries(client: &Client, name: &str) -> Vec<LedgerEntry> {
    client
        .query(
            "SELECT file_id, status, failure_reason, lines, accepted, duplicates, rejected \
             FROM ingest_files WHERE file_name = $1 ORDER BY file_id",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| LedgerEntry {
            file_id: r.get(0),
            status: r.get(1),
            failure_reason: r.get(2),
            lines: r.get(3),
            accepted: r.get(4),
            duplicates: r.get(5),
            rejected: r.get(6),
        })
        .collect()
}

/// The one ledger entry recorded under `name`.
async fn ledger_entry(client: &Client, name: &str) -> LedgerEntry {
    let mut entries = ledger_entries(client, name).await;
    assert_eq!(entries.len(), 1, "ledger entries for {name}: {entries:?}");
    entries.remove(0)
}

/// A ledger entry's rejected rows: (line, reason, raw line), in line order.
async fn rejected_rows(client: &Client, file_id: i64) -> Vec<(i64, String, String)> {
    client
        .query(
            "SELECT line_number, reason, raw_line FROM rejected_rows WHERE file_id = $1 \
             ORDER BY line_number",
            &[&file_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The events a ledger entry stored, with the line each came from.
async fn events_of(client: &Client, file_id: i64) -> BTreeMap<Uuid, i64> {
    client
        .query(
            "SELECT event_id, source_line FROM events WHERE source_file_id = $1",
            &[&file_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Delivers a file as producers should: written under a hidden name, then renamed into place.
fn deliver(dir: &Path, name: &str, bytes: &[u8]) {
    let staging = dir.join(format!(".{name}.tmp"));
    std::fs::write(&staging, bytes).unwrap();
    std::fs::rename(&staging, dir.join(name)).unwrap();
}

/// Waits until each of `names` has a finished ledger entry and has left `input`. On timeout,
/// fails naming the files still pending and what the ingestor warned about.
async fn wait_for_files(
    db: &TestDatabase,
    ingestor: &Ingestor,
    input: &Path,
    names: &[&str],
    timeout: Duration,
) {
    let client = db.client().await;
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let finished: Vec<String> = client
            .query(
                "SELECT file_name FROM ingest_files WHERE status IN ('loaded', 'failed') \
                 AND file_name = ANY($1)",
                &[&names],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let pending: Vec<&String> = names
            .iter()
            .filter(|n| !finished.contains(n) || input.join(n).exists())
            .collect();
        if pending.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            // The last few warnings, without their (long) backtraces.
            let complaints: Vec<String> = ingestor
                .log_lines()
                .into_iter()
                .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
                .map(|l| {
                    l.split("Stack backtrace")
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            let last = &complaints[complaints.len().saturating_sub(3)..];
            panic!("timed out waiting for {pending:?}; last ingestor warnings: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a valid event file of at least `bytes` bytes with unique ids; returns its row count.
fn write_valid_file(path: &Path, bytes: u64) -> u64 {
    let file = std::fs::File::create(path).unwrap();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "{HEADER_LINE}").unwrap();
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let ts = recent();
    let mut line = String::with_capacity(128);
    let (mut written, mut rows) = (0u64, 0u64);
    while written < bytes {
        let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        let (event_type, price) = match rows % 4 {
            0 => ("view", ""),
            1 => ("add_to_cart", "24.50"),
            2 => ("remove_from_cart", "24.50"),
            _ => ("purchase", "19.99"),
        };
        line.clear();
        writeln!(
            line,
            "{id},{},{},{event_type},{price},{ts}",
            rows % 100_000 + 1,
            rows % 5_000 + 1
        )
        .unwrap();
        out.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
        rows += 1;
    }
    out.into_inner().unwrap().sync_all().unwrap();
    rows
}

/// Peak resident set size (`VmHWM`) of a live process, in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// The read offset of every descriptor `pid` holds open on `path` (Linux `/proc`). A deleted
/// file no longer matches: the kernel then names it `<path> (deleted)`.
fn open_offsets(pid: u32, path: &Path) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        .filter_map(|fd| {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|pos| pos.trim().parse().ok())
        })
        .collect()
}

/// Bytes `pid` has read so far, from files and sockets alike (`rchar` in `/proc/<pid>/io`).
fn bytes_read_by(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/<pid>/io")
}

/// Waits until `pid` holds `path` open partway through (not at its start nor its end) after it
/// has read at least `total` bytes in all; returns that descriptor's offset.
async fn wait_until_reading(pid: u32, path: &Path, total: u64) -> u64 {
    let size = std::fs::metadata(path).unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partway = open_offsets(pid, path)
            .into_iter()
            .find(|&pos| pos > 0 && pos < size);
        if let Some(offset) = partway.filter(|_| bytes_read_by(pid) >= total) {
            return offset;
        }
        assert!(
            path.exists(),
            "{} was finished before it could be deleted mid-read",
            path.display()
        );
        assert!(
            Instant::now() < deadline,
            "the ingestor never read {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
