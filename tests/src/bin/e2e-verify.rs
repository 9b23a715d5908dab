//! `e2e-verify`: the oracle of the compose end-to-end test (scripts/compose-e2e).
//!
//! Why it exists: after faults across containers, "the numbers look plausible" proves nothing.
//! This reads every published file back with the event contract itself, independently of the
//! ingestor, and checks that the database holds exactly the valid unique event ids of those
//! files, that every file has one loaded ledger entry, and that the ledger's line counts add up
//! to the files' lines. It prints the figures and exits 1 on any difference.
//!
//! Usage: `e2e-verify <dir with the published files> <admin connection string>`; files are
//! found recursively (processed/, failed/ and anything left in the input directory).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use event_contract::{EventReader, ExtraColumnPolicy, ValidationContext};
use uuid::Uuid;

/// What the files say the database must hold, read with the contract.
#[derive(Debug, Default)]
struct Expected {
    files: i64,
    bytes: i64,
    lines: i64,
    rejected: i64,
    valid: i64,
    unique_ids: HashSet<Uuid>,
}

/// What the database holds.
#[derive(Debug)]
struct Stored {
    loaded_files: i64,
    failed_files: i64,
    bytes: i64,
    lines: i64,
    accepted: i64,
    duplicates: i64,
    rejected: i64,
    event_ids: HashSet<Uuid>,
}

fn csv_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.context("reading a directory entry")?.path();
        if path.is_dir() {
            csv_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "csv") {
            out.push(path);
        }
    }
    Ok(())
}

fn expected(files: &[PathBuf]) -> anyhow::Result<Expected> {
    let mut expected = Expected::default();
    for path in files {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        expected.files += 1;
        expected.bytes += i64::try_from(file.metadata()?.len())?;
        let reader = EventReader::new(file, ValidationContext::now(), ExtraColumnPolicy::Ignore)
            .with_context(|| format!("reading the header of {}", path.display()))?;
        for row in reader {
            let row = row.with_context(|| format!("reading {}", path.display()))?;
            expected.lines += 1;
            match row.outcome {
                Ok(event) => {
                    expected.valid += 1;
                    expected.unique_ids.insert(*event.event_id.as_uuid());
                }
                Err(_) => expected.rejected += 1,
            }
        }
    }
    Ok(expected)
}

async fn stored(url: &str) -> anyhow::Result<Stored> {
    let client = stack_tests::connect(url).await?;
    let ledger = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'loaded'),
                    count(*) FILTER (WHERE status = 'failed'),
                    coalesce(sum(size_bytes), 0)::bigint, coalesce(sum(lines), 0)::bigint,
                    coalesce(sum(accepted), 0)::bigint, coalesce(sum(duplicates), 0)::bigint,
                    coalesce(sum(rejected), 0)::bigint
             FROM ingest_files",
            &[],
        )
        .await
        .context("reading the ledger")?;
    let event_ids = client
        .query("SELECT event_id FROM events", &[])
        .await
        .context("reading event ids")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(Stored {
        loaded_files: ledger.get(0),
        failed_files: ledger.get(1),
        bytes: ledger.get(2),
        lines: ledger.get(3),
        accepted: ledger.get(4),
        duplicates: ledger.get(5),
        rejected: ledger.get(6),
        event_ids,
    })
}

/// Every difference between the files and the database, as sentences.
fn differences(expected: &Expected, stored: &Stored) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |what: &str, want: i64, got: i64| {
        if want != got {
            problems.push(format!("{what}: files say {want}, database says {got}"));
        }
    };
    check("loaded ledger entries", expected.files, stored.loaded_files);
    check("failed ledger entries", 0, stored.failed_files);
    check("bytes in the ledger", expected.bytes, stored.bytes);
    check("lines in the ledger", expected.lines, stored.lines);
    check("rejected lines", expected.rejected, stored.rejected);
    let unique = i64::try_from(expected.unique_ids.len()).unwrap_or(i64::MAX);
    check("accepted lines", unique, stored.accepted);
    check(
        "duplicate lines",
        expected.valid - unique,
        stored.duplicates,
    );
    let missing = expected.unique_ids.difference(&stored.event_ids).count();
    let extra = stored.event_ids.difference(&expected.unique_ids).count();
    if missing != 0 || extra != 0 {
        problems.push(format!(
            "events table: {missing} valid ids of the files missing, {extra} ids no file holds"
        ));
    }
    problems
}

async fn run(dir: &Path, url: &str) -> anyhow::Result<bool> {
    let mut files = Vec::new();
    csv_files(dir, &mut files)?;
    if files.is_empty() {
        bail!("no published .csv file under {}", dir.display());
    }
    let expected = expected(&files)?;
    let stored = stored(url).await?;
    println!(
        "files {} ({} bytes), lines {}: valid {} (unique {}), rejected {}",
        expected.files,
        expected.bytes,
        expected.lines,
        expected.valid,
        expected.unique_ids.len(),
        expected.rejected
    );
    println!(
        "database: {} events; ledger: {} loaded, {} failed, lines {} = accepted {} + duplicates {} + rejected {}",
        stored.event_ids.len(),
        stored.loaded_files,
        stored.failed_files,
        stored.lines,
        stored.accepted,
        stored.duplicates,
        stored.rejected
    );
    let problems = differences(&expected, &stored);
    for problem in &problems {
        println!("MISMATCH {problem}");
    }
    Ok(problems.is_empty())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, url] = args.as_slice() else {
        eprintln!("usage: e2e-verify <dir with the published files> <admin connection string>");
        return ExitCode::from(2);
    };
    match run(Path::new(dir), url).await {
        Ok(true) => {
            println!("exact: every line of every file is accounted for");
            ExitCode::SUCCESS
        }
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("e2e-verify: {e:#}");
            ExitCode::FAILURE
        }
    }
}
