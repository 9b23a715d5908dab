//! `ingestor check`: the set-up checker. Every check prints one line, so an operator sees all
//! that is wrong at once instead of fixing one error per start attempt.

use std::path::Path;

use crate::config::Settings;
use crate::store::inspect::{self, SchemaVersion};
use crate::store::{connect_once, encoding_problem, server_encoding};

/// The schema version this ingestor needs: the number of the newest script in `sql/`, which
/// each script from `050_schema_version.sql` on records in table `schema_version`.
pub const SCHEMA_VERSION: i32 = 70;

/// Columns the ingestor writes, per table: the schema from `sql/` must have them.
const REQUIRED_COLUMNS: [(&str, &[&str]); 3] = [
    (
        "events",
        &[
            "event_id",
            "user_id",
            "product_id",
            "event_type",
            "price",
            "event_timestamp",
            "source_file_id",
            "source_line",
        ],
    ),
    (
        "ingest_files",
        &[
            "file_id",
            "file_name",
            "size_bytes",
            "content_hash",
            "status",
            "lines",
            "accepted",
            "duplicates",
            "rejected",
            "failure_reason",
            "failure_message",
            "claimed_by",
            "committed_at",
        ],
    ),
    (
        "rejected_rows",
        &["file_id", "line_number", "raw_line", "reason", "message"],
    ),
];
/// Privileges the ingestor needs: (table, privilege).
const NEEDED: [(&str, &str); 10] = [
    ("events", "SELECT"),
    ("events", "INSERT"),
    ("ingest_files", "SELECT"),
    ("ingest_files", "INSERT"),
    ("ingest_files", "UPDATE"),
    ("ingest_files", "DELETE"),
    ("rejected_rows", "SELECT"),
    ("rejected_rows", "INSERT"),
    ("pruned_files", "SELECT"),
    ("pruned_files", "INSERT"),
];
/// Privileges it should not have: least privilege means no rewriting history.
const EXCESSIVE: [(&str, &str); 3] = [
    ("events", "UPDATE"),
    ("events", "DELETE"),
    ("events", "TRUNCATE"),
];

/// Tally of the checks.
#[derive(Default)]
struct Report {
    failures: usize,
}

impl Report {
    fn pass(&mut self, what: &str) {
        println!("  ok    {what}");
    }
    fn warn(&mut self, what: &str) {
        println!("  warn  {what}");
    }
    fn fail(&mut self, what: &str) {
        self.failures += 1;
        println!("  FAIL  {what}");
    }
    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            self.pass(what)
        } else {
            self.fail(what)
        }
    }
}

/// Runs every check; `true` when none failed.
pub async fn run(settings: &Settings) -> bool {
    let mut report = Report::default();
    println!("configuration");
    report.pass(&format!(
        "settings loaded (input {}, database {})",
        settings.input_dir.display(),
        settings.database_display
    ));
    println!("directories");
    check_dir(&mut report, "input", &settings.input_dir, false);
    // The service creates these at start-up; `check` only does so where the input directory
    // exists, so a mistyped path does not leave new directories behind.
    let may_create = settings.input_dir.is_dir();
    check_dir(&mut report, "archive", &settings.archive_dir, may_create);
    check_dir(&mut report, "failed", &settings.failed_dir, may_create);
    println!("database");
    report.pass(&format!("TLS {}", settings.tls.describe()));
    match connect_once(settings, "ingestor-check").await {
        Err(e) => report.fail(&format!("{e:#}")),
        Ok(client) => {
            report.pass(&format!("reachable, {}", transport(&client).await));
            check_encoding(&mut report, &client).await;
            check_schema_version(&mut report, &client).await;
            check_schema(&mut report, &client).await;
            check_privileges(&mut report, &client).await;
        }
    }
    println!(
        "{}",
        if report.failures == 0 {
            "all checks passed"
        } else {
            "some checks FAILED"
        }
    );
    report.failures == 0
}

fn check_dir(report: &mut Report, role: &str, dir: &Path, may_create: bool) {
    if !dir.is_dir() {
        if may_create && std::fs::create_dir_all(dir).is_ok() {
            report.pass(&format!("{role} directory {} created", dir.display()));
        } else {
            report.fail(&format!(
                "{role} directory {} does not exist",
                dir.display()
            ));
            return;
        }
    }
    let probe = dir.join(format!(".ingestor-check-{}", std::process::id()));
    let writable = std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe));
    let readable = std::fs::read_dir(dir).is_ok();
    match (readable, writable) {
        (true, Ok(())) => report.pass(&format!(
            "{role} directory {} is readable and writable",
            dir.display()
        )),
        (false, _) => report.fail(&format!(
            "{role} directory {} cannot be listed",
            dir.display()
        )),
        (true, Err(e)) => report.fail(&format!(
            "{role} directory {} is not writable: {e}",
            dir.display()
        )),
    }
}

/// How this session reached the server, as the server saw it (`pg_stat_ssl`).
async fn transport(client: &tokio_postgres::Client) -> String {
    match inspect::session_tls(client).await {
        Ok(Some(version)) => format!("over TLS ({version})"),
        Ok(None) => "without TLS".to_owned(),
        Err(e) => format!("transport unknown ({e:#})"),
    }
}

async fn check_encoding(report: &mut Report, client: &tokio_postgres::Client) {
    match server_encoding(client).await {
        Err(e) => report.fail(&format!("cannot read the database's encoding: {e}")),
        Ok(encoding) => match encoding_problem(&encoding) {
            None => report.pass(&format!("database encoding is {encoding}")),
            Some(problem) => report.fail(&problem),
        },
    }
}

async fn check_schema_version(report: &mut Report, client: &tokio_postgres::Client) {
    let newest = SCHEMA_VERSION;
    match inspect::schema_version(client).await {
        Ok(SchemaVersion::Recorded(recorded)) => match recorded {
            Some(version) if version >= newest => {
                report.pass(&format!("schema version {version} (needs {newest})"))
            }
            version => report.fail(&format!(
                "schema version {} is older than the {newest} this ingestor needs: apply the scripts of sql/ numbered above it, in order (they are safe to apply twice)",
                version.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
            )),
        },
        Ok(SchemaVersion::Unrecorded) => report.fail(&format!(
                "schema version unknown (no table schema_version): the schema predates sql/050_schema_version.sql or was never applied; apply the scripts of sql/ in order (they are safe to apply twice); this ingestor needs version {newest}"
            )),
        Err(e) => report.fail(&format!("{e:#}")),
    }
}

async fn check_schema(report: &mut Report, client: &tokio_postgres::Client) {
    for (table, columns) in REQUIRED_COLUMNS {
        let found = match inspect::table_columns(client, table).await {
            Ok(found) => found,
            Err(e) => {
                report.fail(&format!("{e:#}"));
                continue;
            }
        };
        let missing: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|c| !found.iter().any(|f| f == c))
            .collect();
        if found.is_empty() {
            report.fail(&format!(
                "table {table} is missing (apply the scripts in sql/)"
            ));
        } else {
            report.check(
                missing.is_empty(),
                &format!(
                    "table {table} has the expected columns{}",
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!(" (missing: {})", missing.join(", "))
                    }
                ),
            );
        }
    }
}

async fn check_privileges(report: &mut Report, client: &tokio_postgres::Client) {
    let Ok((user, superuser)) = inspect::current_role(client).await else {
        report.fail("cannot read the current role");
        return;
    };
    if superuser {
        report.warn(&format!(
            "connected as superuser {user}: use the least-privilege role `ingestor`"
        ));
    } else {
        report.pass(&format!("connected as {user}, not a superuser"));
    }
    for (table, privilege) in NEEDED {
        let has = inspect::has_privilege(client, table, privilege).await;
        report.check(
            has == Some(true),
            &format!("{user} may {privilege} on {table}"),
        );
    }
    for (table, privilege) in EXCESSIVE {
        if !superuser && inspect::has_privilege(client, table, privilege).await == Some(true) {
            report.warn(&format!(
                "{user} may {privilege} on {table}: more than it needs"
            ));
        }
    }
}
