//! Test harness for the whole stack: a fresh, fully migrated PostgreSQL database per test, and
//! guards that kill the processes a test starts.
//!
//! Why this crate exists: every service's integration tests and the cross-service end-to-end
//! tests need the same two things, and both are easy to get subtly wrong. Tests must run against
//! a real server (never skipped), in parallel, each in its own database built from the very same
//! `sql/` scripts production uses, and must leave nothing behind: neither databases nor stray
//! processes, not even when a test panics.
//!
//! # Layout
//!
//! Everything lives in this file; the items group by concern:
//!
//! - **Locations**: [`workspace_root`], [`sql_dir`] and [`sql_scripts`] find the schema
//!   scripts in the repository, independent of the directory `cargo test` runs in.
//! - **Databases**: [`database_url`] names the server (env `TEST_DATABASE_URL`, see
//!   [`DEFAULT_TEST_DATABASE_URL`]); [`TestDatabase`] creates a uniquely named database on it,
//!   applies every script with [`apply_sql_scripts`], hands out clients, and drops the database
//!   again when it goes out of scope. [`connect`] opens a client for any connection string.
//! - **Processes**: [`ChildGuard`] owns a child process and kills it when dropped;
//!   [`http_get`] asks a service started that way one HTTP question, on a port from
//!   [`free_port`].
//! - **The ledger**: [`wait_for_finished_files`] waits for an ingestor to finish a directory;
//!   [`orphan_events`] counts events no loaded ledger entry accounts for.
//!
//! The harness panics (with one clear message) instead of returning errors where a test could
//! not do anything useful with an error anyway, e.g. when the server is unreachable; those
//! functions say so in a `# Panics` section.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::{Client, Config, NoTls};

/// The environment variable naming the tests' server: an admin connection to a maintenance
/// database.
///
/// It is deliberately not `DATABASE_URL`, which is the ingestor's own (least-privilege)
/// connection: a shell that exports the ingestor's URL must not turn the tests' admin
/// connection into the `ingestor` role. `scripts/test` sets it to a throwaway server of its own
/// when it is not set.
pub const TEST_DATABASE_URL_VAR: &str = "TEST_DATABASE_URL";

/// The server used when `TEST_DATABASE_URL` is not set: the local cluster's superuser with
/// trust authentication, connected to the `postgres` maintenance database.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long a connection attempt may take before the harness gives up, unless the connection
/// string sets its own `connect_timeout`. Keeps a firewalled or hung server from stalling the
/// whole test run.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`ChildGuard::wait_with_timeout`] checks whether the child has exited.
const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The connection string of the maintenance database the harness creates test databases from.
///
/// Reads `TEST_DATABASE_URL` ([`TEST_DATABASE_URL_VAR`]) and falls back to
/// [`DEFAULT_TEST_DATABASE_URL`]; `DATABASE_URL` is never read. Both URLs
/// (`postgres://user@host:port/db`) and key/value strings (`host=... user=...`) work.
pub fn database_url() -> String {
    std::env::var(TEST_DATABASE_URL_VAR).unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// The root of the Cargo workspace (the repository root).
pub fn workspace_root() -> PathBuf {
    // This crate lives at <root>/tests; the path is fixed at compile time so tests work from
    // any current directory.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The directory holding the schema scripts (`<workspace root>/sql`).
pub fn sql_dir() -> PathBuf {
    workspace_root().join("sql")
}

/// Every `*.sql` file in [`sql_dir`], sorted by file name, which is the order to apply them in.
///
/// # Panics
///
/// If the directory cannot be read or holds no script: every database test would be
/// meaningless without the schema, so this fails loudly instead of returning an empty list.
pub fn sql_scripts() -> Vec<PathBuf> {
    let dir = sql_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read the SQL scripts directory {}: {e}",
            dir.display()
        )
    });
    let mut scripts: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    assert!(
        !scripts.is_empty(),
        "no *.sql scripts found in {}",
        dir.display()
    );
    scripts.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    scripts
}

/// Applies every script from [`sql_scripts`], in order, with `batch_execute`.
///
/// Each script runs as one simple-protocol query, which PostgreSQL executes in one implicit
/// transaction, so a failing script leaves nothing half-applied.
///
/// # Errors
///
/// The first script that fails, named in the error together with the line the server pointed
/// at (when it did).
pub async fn apply_sql_scripts(client: &Client) -> anyhow::Result<()> {
    for path in sql_scripts() {
        let sql = std::fs::read_to_string(&path)
            .with_context(|| format!("reading SQL script {}", path.display()))?;
        client.batch_execute(&sql).await.map_err(|e| {
            let line = error_line(&e, &sql).map_or_else(String::new, |l| format!(" at line {l}"));
            anyhow::Error::new(e).context(format!("applying SQL script {}{line}", path.display()))
        })?;
    }
    Ok(())
}

/// Opens a connection to `url` and spawns its connection task on the current Tokio runtime.
///
/// # Errors
///
/// If `url` is not a valid connection string or the server cannot be reached or refuses the
/// connection.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let config = parse_config(url)?;
    connect_with(&config)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))
}

/// A database of its own for one test, created from the `sql/` scripts and dropped again when
/// this value is dropped (even if the test panics).
///
/// The name is `test_<uuid>`, so any number of tests can run in parallel on one server.
#[derive(Debug)]
pub struct TestDatabase {
    /// The database's name, `test_` followed by a UUID without dashes.
    pub name: String,
    /// Connection string for the new database: the maintenance connection string from
    /// [`database_url`] with only the database name replaced. Pass it to child processes or to
    /// `psql -d`.
    pub url: String,
    /// Parsed form of `url`, used by [`TestDatabase::client`].
    config: Config,
    /// The maintenance connection string the database was created from and is dropped through.
    maintenance_url: String,
}

impl TestDatabase {
    /// Creates a fresh database on the server named by [`database_url`] and applies every
    /// schema script to it.
    ///
    /// # Panics
    ///
    /// If the server is not reachable (with a message saying how to start it), or if creating
    /// the database or applying a script fails (naming the script). A test cannot do anything
    /// sensible without its database.
    pub async fn create() -> TestDatabase {
        let maintenance_url = database_url();
        let maintenance = match parse_config(&maintenance_url) {
            Ok(config) => config,
            Err(e) => panic!("{TEST_DATABASE_URL_VAR} is not a valid connection string: {e:#}"),
        };
        let admin = match connect_with(&maintenance).await {
            Ok(client) => client,
            Err(e) => panic!(
                "PostgreSQL is not reachable at {}: {}. Run the tests with scripts/test, which \
                 starts a throwaway server when {TEST_DATABASE_URL_VAR} is not set, or point \
                 {TEST_DATABASE_URL_VAR} at a running server where that user may create \
                 databases and roles",
                redact(&maintenance_url),
                error_chain(&e),
            ),
        };

        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        if let Err(e) = admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .await
        {
            panic!("cannot create test database {name}: {}", error_chain(&e));
        }

        let mut config = maintenance;
        config.dbname(&name);
        // Constructed before the scripts run, so a failing script still drops the database.
        let database = TestDatabase {
            url: with_dbname(&maintenance_url, &name),
            name,
            config,
            maintenance_url,
        };
        let client = database.client().await;
        if let Err(e) = apply_sql_scripts(&client).await {
            panic!("cannot set up test database {}: {e:#}", database.name);
        }
        database
    }

    /// A new client connected to this database; its connection task runs on the current
    /// Tokio runtime.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub async fn client(&self) -> Client {
        match connect_with(&self.config).await {
            Ok(client) => client,
            Err(e) => panic!(
                "cannot connect to test database {}: {}",
                self.name,
                error_chain(&e)
            ),
        }
    }
}

impl Drop for TestDatabase {
    /// Drops the database, terminating any connections still open to it.
    ///
    /// `Drop` cannot be async, and the test's runtime may be shutting down or blocked on this
    /// very call, so the work runs on a fresh thread with its own single-threaded runtime and
    /// this thread waits for it. Failures are printed, never raised: panicking in `Drop` during
    /// a test's unwinding would abort the whole test binary.
    fn drop(&mut self) {
        let name = self.name.clone();
        let maintenance_url = self.maintenance_url.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("drop-{name}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        eprintln!("cannot drop test database {name}: no Tokio runtime: {e}");
                        return;
                    }
                };
                let result = runtime.block_on(async {
                    let admin = connect(&maintenance_url).await?;
                    // FORCE (PostgreSQL 13+) terminates connections the test left open.
                    admin
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            quote_ident(&name)
                        ))
                        .await
                        .context("DROP DATABASE")
                });
                if let Err(e) = result {
                    eprintln!("cannot drop test database {name}: {e:#}");
                }
            });
        match spawned {
            Ok(handle) => {
                if handle.join().is_err() {
                    eprintln!("the thread dropping test database {} panicked", self.name);
                }
            }
            Err(e) => eprintln!("cannot drop test database {}: {e}", self.name),
        }
    }
}

/// Owns a child process and kills it (SIGKILL) and reaps it when dropped, so processes a test
/// starts die when the test ends, even if it panics.
///
/// `std::process::Child` remembers whether it has been reaped, so the guard never signals a
/// PID that the system may already have handed to another process.
#[derive(Debug)]
pub struct ChildGuard {
    /// The guarded process.
    child: Child,
}

impl ChildGuard {
    /// Takes ownership of `child`.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child }
    }

    /// The operating system's process id of the child, e.g. to send it SIGTERM.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child itself, e.g. to take its stdout or to wait for it.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits up to `timeout` for the child to exit and returns its exit status, or `None` if it
    /// is still running (or its status cannot be read).
    ///
    /// Polls and sleeps on the calling thread: in an async test, do not call it while the
    /// child depends on something served by the same single-threaded runtime.
    pub fn wait_with_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(CHILD_POLL_INTERVAL),
                Ok(None) | Err(_) => return None,
            }
        }
    }
    /// Waits up to `timeout` for the child to write its ready file (`--ready-file path`) and
    /// returns the address it bound.
    ///
    /// # Errors
    /// Why there is none: the child exited first (with its status), the file is not a ready
    /// file, or the time ran out. The caller adds the child's logs.
    pub fn wait_for_ready_file(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<std::net::SocketAddr, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match service_support::ReadyFile::read(path) {
                Ok(Some(ready)) => return Ok(ready.listen),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited with {status} before it listened"));
            }
            if Instant::now() >= deadline {
                return Err(format!("it wrote no ready file within {timeout:?}"));
            }
            std::thread::sleep(CHILD_POLL_INTERVAL);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // already exited and reaped
        }
        if let Err(e) = self.child.kill() {
            eprintln!("cannot kill child process {}: {e}", self.child.id());
        }
        if let Err(e) = self.child.wait() {
            eprintln!("cannot reap child process {}: {e}", self.child.id());
        }
    }
}

/// Parses a connection string and applies the harness's connect timeout unless it sets one.
fn parse_config(url: &str) -> anyhow::Result<Config> {
    let mut config = Config::from_str(url)
        .with_context(|| format!("invalid connection string {}", redact(url)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// Connects and spawns the connection task, which logs its error if the connection breaks.
async fn connect_with(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("PostgreSQL connection error: {}", error_chain(&e));
        }
    });
    Ok(client)
}

/// `url` with its database name replaced by `dbname`; everything else is kept verbatim.
///
/// Handles both URL (`postgres://user@host/db?opts`) and key/value (`host=h dbname=db`)
/// connection strings. `dbname` must need no quoting or percent-encoding (test database names
/// are `[a-z0-9_]`).
fn with_dbname(url: &str, dbname: &str) -> String {
    let Some(scheme_end) = ["postgresql://", "postgres://"]
        .iter()
        .find(|scheme| url.starts_with(**scheme))
        .map(|scheme| scheme.len())
    else {
        // Key/value form: libpq and tokio-postgres both let a later key override an earlier one.
        return format!("{url} dbname={dbname}");
    };
    let (scheme, rest) = url.split_at(scheme_end);
    // The authority (user:password@host:port) ends at the first '/' or '?'; both characters
    // must be percent-encoded inside it.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(authority_end);
    let query = path_and_query
        .find('?')
        .map_or("", |start| &path_and_query[start + 1..]);
    // A `dbname` query parameter would override the path; drop it.
    let kept: Vec<&str> = query
        .split('&')
        .filter(|param| !param.is_empty() && !param.starts_with("dbname="))
        .collect();
    let mut rebuilt = format!("{scheme}{authority}/{dbname}");
    if !kept.is_empty() {
        let _ = write!(rebuilt, "?{}", kept.join("&"));
    }
    rebuilt
}

/// `url` with the password (if any) replaced by `***`, for error messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // Key/value form: blank out a `password=` value (quoted values are rare in test setups
        // and would only be partly hidden).
        return url
            .split(' ')
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &url[scheme_end + at..]
        ),
        _ => url.to_owned(),
    }
}

/// Quotes an SQL identifier (`"name"`, inner quotes doubled).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The error and all its causes on one line, `outer: inner: innermost`. tokio-postgres's
/// `Display` prints only the outermost layer ("db error"), which hides what went wrong.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// The 1-based line of `sql` the server's error points at, if it points anywhere.
fn error_line(error: &tokio_postgres::Error, sql: &str) -> Option<usize> {
    match error.as_db_error()?.position()? {
        // A 1-based position counted in characters, not bytes.
        ErrorPosition::Original(position) => {
            let before = usize::try_from(*position).ok()?.saturating_sub(1);
            Some(sql.chars().take(before).filter(|c| *c == '\n').count() + 1)
        }
        ErrorPosition::Internal { .. } => None,
    }
}

/// A minimal HTTP/1.0 `GET path` on `127.0.0.1:port`: (status, body); status 0 when nothing
/// answers. Enough for a service's health and metrics endpoints without an HTTP client.
///
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    parse_http_response(&response)
}

/// The status code (0 if there is none) and the body of a raw HTTP/1 response.
pub fn parse_http_response(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A port on 127.0.0.1 nobody listened on a moment ago (released again, so a child can bind it).
///
/// # Panics
/// When no local port can be bound at all.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a local port: {e}"))
}

/// Waits until `files` ledger entries are finished (`loaded` or `failed`) and `input` holds no
/// event file any more.
///
/// # Panics
/// On a database error, or at `timeout`, with the counts and `context()` (e.g. the services'
/// logs) in the message.
pub async fn wait_for_finished_files(
    client: &Client,
    input: &Path,
    files: usize,
    timeout: Duration,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let done: i64 = client
            .query_one(
                "SELECT count(*) FROM ingest_files WHERE status IN ('loaded', 'failed')",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("cannot count finished ledger entries: {e}"))
            .get(0);
        let waiting = std::fs::read_dir(input)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", input.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "csv"))
            .count();
        if usize::try_from(done).is_ok_and(|done| done >= files) && waiting == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {done} of {files} files finished, {waiting} waiting{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many stored events belong to no ledger entry with status `loaded`.
///
/// # Panics
/// On a database error.
pub async fn orphan_events(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM ingest_files f \
             WHERE f.file_id = e.source_file_id AND f.status = 'loaded')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot count orphan events: {e}"))
        .get(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_dbname_replaces_only_the_database_of_a_url() {
        assert_eq!(
            with_dbname("postgres://postgres@127.0.0.1:5432/postgres", "test_1"),
            "postgres://postgres@127.0.0.1:5432/test_1"
        );
        assert_eq!(
            with_dbname("postgresql://u:p%2F@h:1/db?sslmode=disable&dbname=x", "t"),
            "postgresql://u:p%2F@h:1/t?sslmode=disable"
        );
        assert_eq!(with_dbname("postgres://h", "t"), "postgres://h/t");
        assert_eq!(
            with_dbname("postgres://h?port=1", "t"),
            "postgres://h/t?port=1"
        );
    }

    #[test]
    fn with_dbname_overrides_the_database_of_a_key_value_string() {
        let url = with_dbname("host=127.0.0.1 user=postgres dbname=postgres", "test_1");
        let config = Config::from_str(&url).unwrap();
        assert_eq!(config.get_dbname(), Some("test_1"));
        assert_eq!(config.get_user(), Some("postgres"));
    }

    #[test]
    fn a_rebuilt_url_keeps_host_port_user_and_password() {
        let original = "postgres://alice:secret@db.example:6543/postgres?application_name=t";
        let rebuilt = Config::from_str(&with_dbname(original, "test_1")).unwrap();
        let original = Config::from_str(original).unwrap();
        assert_eq!(rebuilt.get_hosts(), original.get_hosts());
        assert_eq!(rebuilt.get_ports(), original.get_ports());
        assert_eq!(rebuilt.get_user(), original.get_user());
        assert_eq!(rebuilt.get_password(), original.get_password());
        assert_eq!(rebuilt.get_application_name(), Some("t"));
        assert_eq!(rebuilt.get_dbname(), Some("test_1"));
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            redact("postgres://alice:secret@h/db"),
            "postgres://alice:***@h/db"
        );
        assert_eq!(redact("postgres://alice@h/db"), "postgres://alice@h/db");
        assert_eq!(
            redact("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
    }

    #[test]
    fn sql_scripts_are_sorted_by_file_name() {
        let names: Vec<_> = sql_scripts()
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.len() >= 4);
    }
}
