//! The bb8 pool, with the session settings every ingestor connection gets server-side, a pool
//! that never takes back a connection whose protocol state is in doubt, and the one place that
//! decides what a database error means for the loader ([`classify`]).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bb8::ManageConnection;
use bb8_postgres::PostgresConnectionManager;
use rustls::CertificateError;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::Client;

use crate::config::Settings;
use crate::internal_events::PoolObserved;
use crate::tls::Connector;

/// The pool used throughout the service: bb8's, plus the last reason a connection could not be
/// opened.
///
/// Why the wrapper: bb8 opens connections in background tasks and retries them until the
/// checkout times out, so a failed checkout only says "Timed out in bb8", whatever the server
/// answered (a wrong password, a missing database, too many clients, nothing listening). The
/// manager records each failed attempt, and [`Pool::get`] names it instead. It also counts the
/// checkouts waiting right now, which bb8 does not report (its statistics only count them once
/// they end), and keeps the configured size for the saturation panels. Everything else
/// (`state`, ...) is bb8's, through `Deref`.
#[derive(Clone)]
pub struct Pool {
    inner: bb8::Pool<Manager>,
    failures: ConnectFailures,
    waiting: Arc<AtomicUsize>,
    max_size: u32,
}

impl Deref for Pool {
    type Target = bb8::Pool<Manager>;

    fn deref(&self) -> &bb8::Pool<Manager> {
        &self.inner
    }
}

/// A pooled connection.
pub type PooledConnection<'a> = bb8::PooledConnection<'a, Manager>;

/// Why no pooled connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Opening a connection failed: the cause and its fix ([`explain`]).
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// Every connection stayed busy until the checkout timed out.
    #[error(
        "no pooled database connection became free within connect_timeout_ms (the server \
         accepts connections, but all of the pool's are busy)"
    )]
    Busy,
}

impl Pool {
    /// A connection from the pool, within `connect_timeout_ms`.
    ///
    /// # Errors
    /// [`PoolError::Connect`] naming what the server (or the network) answered to the latest
    /// attempt to connect, or [`PoolError::Busy`].
    pub async fn get(&self) -> Result<PooledConnection<'_>, PoolError> {
        let _waiting = Waiting::start(&self.waiting);
        match self.inner.get().await {
            Ok(conn) => Ok(conn),
            Err(bb8::RunError::User(e)) => Err(PoolError::Connect(explain(&e))),
            Err(bb8::RunError::TimedOut) => Err(self
                .last_connect_failure()
                .map_or(PoolError::Busy, PoolError::Connect)),
        }
    }

    /// Checkouts waiting for a connection right now (callers of [`Pool::get`] not yet served).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The most connections the pool opens (`pool_size`).
    pub fn max_size(&self) -> u32 {
        self.max_size
    }

    /// What went wrong at the latest attempt to open a connection, if it failed recently and
    /// no attempt succeeded since.
    pub fn last_connect_failure(&self) -> Option<String> {
        self.failures.recent()
    }
}

/// The latest failed connection attempt, shared by the manager (which records it) and the pool
/// (which reports it). A std mutex: held only to copy a string, never across an await.
#[derive(Clone, Default, Debug)]
struct ConnectFailures(Arc<Mutex<Option<(Instant, String)>>>);

/// A failure older than this no longer explains a checkout that timed out: the server may have
/// come back and the connections be merely busy. bb8 retries a failing connection every few
/// seconds at most, so a server that still refuses has a fresher failure on record.
const FAILURE_RELEVANCE: Duration = Duration::from_secs(60);

impl ConnectFailures {
    fn record(&self, explanation: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), explanation));
    }

    fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn recent(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FAILURE_RELEVANCE)
            .map(|(_, explanation)| explanation.clone())
    }
}

/// bb8-postgres's connection manager, with connections that can be marked in doubt: a connection
/// dropped while in doubt is closed by the pool instead of being handed to the next user. It
/// also records why the latest connection attempt failed (see [`Pool`]).
#[derive(Debug)]
pub struct Manager {
    inner: PostgresConnectionManager<Connector>,
    failures: ConnectFailures,
}

/// A pooled PostgreSQL session: the client, and whether its protocol state is in doubt.
///
/// Why the flag exists: a request that failed half-way can leave the client and the server
/// disagreeing about which reply belongs to which request, and the next user of a pooled
/// connection then reads another request's replies ("unexpected message from server", a
/// `SELECT 1` answered by a `ROLLBACK`, a `COMMIT` whose outcome looks unknown). tokio-postgres
/// 0.7 does this itself when a COPY fails before it starts (see `store::copy::CopyNotStarted`),
/// and it cannot be detected from outside. So whoever runs a multi-step exchange (a loading
/// transaction, a readiness check) marks the session [`in doubt`](Self::doubt) first and
/// [`settles`](Self::settle) it only once the exchange ended as expected; an error or a
/// cancellation in between leaves it in doubt, and the pool closes it (`has_broken`).
#[derive(Debug)]
pub struct Connection {
    client: Client,
    in_doubt: bool,
    /// The database was seen to be UTF8 ([`confirm_utf8`](Self::confirm_utf8)).
    utf8: bool,
}

impl Connection {
    /// Marks the session in doubt until [`settle`](Self::settle): returned to the pool before
    /// that, it is closed.
    pub fn doubt(&mut self) {
        self.in_doubt = true;
    }

    /// The exchange ended as expected: the session may go back to the pool.
    pub fn settle(&mut self) {
        self.in_doubt = false;
    }

    /// Confirms, once per session, that the database is UTF8 before anything is loaded into
    /// it: a database in another encoding stores most files and refuses some (a name or a
    /// rejected line it cannot hold), which would leave the backlog stuck behind one file and
    /// the rest split between databases after the fix.
    ///
    /// # Errors
    /// [`NotUtf8`] with the reason and the fix; a database error if the encoding cannot be read.
    pub async fn confirm_utf8(&mut self) -> anyhow::Result<()> {
        if !self.utf8 {
            // In doubt while the reply is awaited: a cancellation would leave it unread.
            self.doubt();
            let encoding = server_encoding(&self.client)
                .await
                .context("cannot read the database's encoding")?;
            self.settle();
            if let Some(problem) = encoding_problem(&encoding) {
                return Err(NotUtf8(problem).into());
            }
            self.utf8 = true;
        }
        Ok(())
    }
}

impl Deref for Connection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl ManageConnection for Manager {
    type Connection = Connection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Connection, tokio_postgres::Error> {
        match self.inner.connect().await {
            Ok(client) => {
                self.failures.clear();
                Ok(Connection {
                    client,
                    in_doubt: false,
                    utf8: false,
                })
            }
            Err(e) => {
                self.failures.record(explain(&e));
                Err(e)
            }
        }
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), tokio_postgres::Error> {
        self.inner.is_valid(&mut conn.client).await
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.in_doubt || conn.client.is_closed()
    }
}

/// Idle TCP time before keepalive probes start: a silently dead server or proxy is noticed in
/// seconds rather than after the kernel's two-hour default.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// The connection settings with timeouts applied on the server side (`-c` options at start-up),
/// so they hold even if the client hangs: a stuck statement or a transaction left idle by a
/// frozen ingestor is ended by PostgreSQL itself, releasing its locks.
pub fn session_config(settings: &Settings) -> tokio_postgres::Config {
    let mut config = settings.database.clone();
    let mut options = config.get_options().unwrap_or_default().to_owned();
    options.push_str(&format!(
        " -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        settings.statement_timeout.as_millis(),
        settings.idle_in_transaction_timeout.as_millis()
    ));
    config
        .options(options.trim())
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE);
    if config.get_application_name().is_none() {
        config.application_name("ingestor");
    }
    config
}

/// Builds the pool without connecting: the service starts (and reports not-ready) while the
/// database is down, and connects as soon as it is back.
pub fn build_pool(settings: &Settings) -> Pool {
    let failures = ConnectFailures::default();
    let manager = Manager {
        inner: PostgresConnectionManager::new(session_config(settings), settings.tls.connector()),
        failures: failures.clone(),
    };
    let inner = bb8::Pool::builder()
        .max_size(settings.pool_size)
        .min_idle(Some(0))
        .connection_timeout(settings.connect_timeout)
        // Connections broken by a database restart are detected on use (and dropped by bb8
        // because `is_closed()` is true), as are those left in doubt (see `Connection`);
        // checking on every checkout would add a round trip.
        .test_on_check_out(false)
        .build_unchecked(manager);
    Pool {
        inner,
        failures,
        waiting: Arc::default(),
        max_size: settings.pool_size,
    }
}

/// One checkout in [`Pool::get`], counted while it waits; a guard, so that a checkout dropped
/// while waiting (a cancelled task, a readiness timeout) is not counted forever.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server encoding the ingestor needs: file names and rejected lines are arbitrary UTF-8
/// text, and a database in another encoding cannot store some of it (SQLSTATE 22P05).
const REQUIRED_ENCODING: &str = "UTF8";

/// The database's encoding, in the query that also proves the session answers.
pub const ENCODING_QUERY: &str = "SELECT current_setting('server_encoding')";

/// Why a database with `encoding` is unfit for loading, with the fix; `None` for UTF8.
pub fn encoding_problem(encoding: &str) -> Option<String> {
    (encoding != REQUIRED_ENCODING).then(|| {
        format!(
            "the database's encoding is {encoding}, not {REQUIRED_ENCODING}: it cannot store every file name and rejected line (a `€` in LATIN1, any non-Latin name), so nothing is loaded into it; create the database with ENCODING 'UTF8' (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0), apply the scripts in sql/ and point DATABASE_URL at it"
        )
    })
}

/// The database is not UTF8: the reason and the fix ([`encoding_problem`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotUtf8(pub String);

/// The database's encoding, read through `client`.
///
/// # Errors
/// On a database error.
pub async fn server_encoding(client: &Client) -> Result<String, tokio_postgres::Error> {
    Ok(client.query_one(ENCODING_QUERY, &[]).await?.get(0))
}

/// What a failed loading transaction means for the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// PostgreSQL refused a row's data (a genuine row-data SQLSTATE): the file responsible is
    /// narrowed down and quarantined.
    RowData,
    /// Another in-flight transaction holds a lock this one waited for longer than
    /// `conflict_wait_ms` (`lock_timeout`, 55P03): typically it is inserting some of the same
    /// event ids. The file is taken again once that transaction ended.
    Conflict,
    /// The role lacks a privilege (42501): a GRANT fixes it, nothing else does.
    PermissionDenied(&'a DbError),
    /// An error no retry fixes: the schema, the database or one of our own settings does not
    /// fit (the error PostgreSQL gave). An operator must act; until then the loader backs off
    /// and `/readyz` says why it is not ready. Never a reason to quarantine a file.
    Blocking(&'a DbError),
    /// The database is unfit for loading (see [`NotUtf8`]), found before loading began: as
    /// `Blocking`, with the reason and the fix.
    Unfit(&'a str),
    /// Anything else (connection lost, timeouts, locks, restarts): retried with backoff.
    Transient,
}

impl Failure<'_> {
    /// What `/readyz` says about a failure no retry fixes, with the fix; `None` for a failure
    /// that a retry (or the quarantine) deals with.
    pub fn blocking_reason(&self) -> Option<String> {
        match self {
            Failure::Blocking(db) | Failure::PermissionDenied(db) => {
                let fix = if *db.code() == SqlState::UNTRANSLATABLE_CHARACTER {
                    "the database's encoding cannot store this text: use a database in UTF8"
                } else {
                    "fix the schema, the grants or the setting"
                };
                Some(format!(
                    "loading fails and no retry fixes it: {} (SQLSTATE {}); {fix}, and loading \
                     resumes by itself",
                    db.message(),
                    db.code().code()
                ))
            }
            Failure::Unfit(why) => Some(format!("loading cannot begin: {why}")),
            Failure::RowData | Failure::Conflict | Failure::Transient => None,
        }
    }
}

/// SQLSTATEs a row's values can raise while it is written: class 23 (integrity violations)
/// except 23505, and the class 22 data exceptions a value can cause. A unique violation (23505)
/// is not row data: another transaction stored the same event concurrently, and a retry counts
/// it as a duplicate. 22023 (invalid parameter value) is deliberately absent: it comes from a
/// setting (`SET lock_timeout`, a start-up option), never from a row.
const ROW_DATA_STATES: [&str; 15] = [
    "23000", // integrity_constraint_violation
    "23001", // restrict_violation
    "23502", // not_null_violation
    "23503", // foreign_key_violation
    "23514", // check_violation
    "23P01", // exclusion_violation
    "22001", // string_data_right_truncation
    "22003", // numeric_value_out_of_range
    "22004", // null_value_not_allowed
    "22007", // invalid_datetime_format
    "22008", // datetime_field_overflow
    "22021", // character_not_in_repertoire
    "22026", // string_data_length_mismatch
    "22P02", // invalid_text_representation
    "22P03", // invalid_binary_representation
];

/// SQLSTATEs no retry fixes, outside class 42 (syntax error or access rule violation: our SQL
/// is fixed, so class 42 means a missing table or column (42P01, 42703) or a missing privilege
/// (42501)): an invalid parameter value from our own settings, text the database's encoding
/// cannot store (a non-UTF8 database), a database or schema that does not exist, and a
/// read-only server (a standby).
const BLOCKING_STATES: [&str; 5] = ["22023", "22P05", "3D000", "3F000", "25006"];

/// Decides, in one place, what a loading error means (see [`Failure`]). The first PostgreSQL
/// error in the chain decides; without one (connection lost, pool timeout) it is transient.
pub fn classify(error: &anyhow::Error) -> Failure<'_> {
    if let Some(NotUtf8(why)) = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<NotUtf8>())
    {
        return Failure::Unfit(why);
    }
    let Some(db) = error.chain().find_map(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
    }) else {
        return Failure::Transient;
    };
    let code = db.code().code();
    if db.code() == &SqlState::INSUFFICIENT_PRIVILEGE {
        Failure::PermissionDenied(db)
    } else if db.code() == &SqlState::LOCK_NOT_AVAILABLE {
        Failure::Conflict
    } else if code.starts_with("42") || BLOCKING_STATES.contains(&code) {
        Failure::Blocking(db)
    } else if ROW_DATA_STATES.contains(&code) {
        Failure::RowData
    } else {
        Failure::Transient
    }
}

/// Whether PostgreSQL itself answered with an error somewhere in the chain (it was reached),
/// as opposed to a connection that could not be opened, timed out or was lost.
pub fn reached_database(error: &anyhow::Error) -> bool {
    sqlstates(error).next().is_some()
}

/// Whether PostgreSQL answered `state` somewhere in the error's chain.
pub fn has_sqlstate(error: &anyhow::Error, state: &SqlState) -> bool {
    sqlstates(error).any(|code| code == state)
}

/// The SQLSTATEs of the PostgreSQL errors in an error's chain of causes.
fn sqlstates(error: &anyhow::Error) -> impl Iterator<Item = &SqlState> {
    error.chain().filter_map(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
    })
}

/// A connection could not be opened: where to, what went wrong and what fixes it.
///
/// Its message is [`explain`]'s, which already carries PostgreSQL's own words; the underlying
/// error is kept for code that needs the SQLSTATE, but not offered as a `source`, so that
/// printing the chain does not repeat the message.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {target}: {explanation}")]
pub struct ConnectError {
    /// The connection string, password masked.
    pub target: String,
    /// The cause and its fix.
    pub explanation: String,
    /// What tokio-postgres returned.
    pub error: tokio_postgres::Error,
}

/// One direct connection for an operator command, named `app_name` in `pg_stat_activity`.
///
/// # Errors
/// A [`ConnectError`] when the database cannot be reached.
pub async fn connect_once(
    settings: &Settings,
    app_name: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let mut config = session_config(settings);
    config.application_name(app_name);
    let (client, connection) = config
        .connect(settings.tls.connector())
        .await
        .map_err(|error| ConnectError {
            target: settings.database_display.clone(),
            explanation: explain(&error),
            error,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Command connection closed");
        }
    });
    Ok(client)
}

/// Why a connection attempt failed, in words an operator can act on: the cause (authentication
/// failed, database missing, too many clients, connection refused, TLS required, ...), what
/// PostgreSQL or the network said, and the fix. The one place that reads connection errors;
/// the service log, `/readyz`, `check` and `status` all show its text.
pub fn explain(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let message = db.message();
        let code = db.code();
        let (cause, fix) = if *code == SqlState::INVALID_PASSWORD {
            (
                "authentication failed",
                "check the role's password (database_password_file, or the password in DATABASE_URL)",
            )
        } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && message.contains("no encryption")
        {
            (
                "TLS required",
                "the server accepts this connection only over TLS (a `hostssl` line in pg_hba.conf), and the ingestor connected without TLS: set sslmode=require, or verify-full with sslrootcert, in DATABASE_URL (or database_sslmode), or allow plain connections in pg_hba.conf",
            )
        } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            (
                "connection not allowed",
                "the server's pg_hba.conf has no line for this host, role and database, or the role may not log in",
            )
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            (
                "database missing",
                "create the database and apply the scripts in sql/, or fix the database name in DATABASE_URL",
            )
        } else if *code == SqlState::TOO_MANY_CONNECTIONS {
            (
                "too many clients",
                "the server's max_connections (or the role's connection limit) is used up: find who holds the connections (pg_stat_activity), lower pool_size or the number of replicas, or raise max_connections",
            )
        } else if *code == SqlState::CANNOT_CONNECT_NOW {
            (
                "the server is starting up or shutting down",
                "wait; the ingestor connects by itself once it accepts connections",
            )
        } else if code.code().starts_with("22") || code.code() == "42704" {
            (
                "a connection setting was refused",
                "check the settings sent at connection (statement_timeout_ms, idle_in_transaction_timeout_ms, the options in DATABASE_URL)",
            )
        } else {
            (
                "the server refused the connection",
                "see PostgreSQL's message and its server log",
            )
        };
        return format!("{cause}: {message} (SQLSTATE {}); {fix}", code.code());
    }
    let text = chain_text(error);
    let io_kind = std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .find_map(|e| e.downcast_ref::<std::io::Error>())
    .map(std::io::Error::kind);
    let (cause, fix) = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => (
            "connection refused",
            "nothing listens at the host and port in DATABASE_URL: start PostgreSQL, or fix the host or port",
        ),
        Some(std::io::ErrorKind::TimedOut) => (
            "connection timed out",
            "the host did not answer within connect_timeout_ms: check the host in DATABASE_URL, the network and any firewall",
        ),
        _ if text.contains("password missing") => (
            "authentication failed",
            "the server demands a password and none is configured: set database_password_file, or put the password in DATABASE_URL",
        ),
        _ if text.contains("server does not support TLS") => (
            "the server does not support TLS, but sslmode requires it",
            "turn TLS on in PostgreSQL (ssl = on, with ssl_cert_file and ssl_key_file), or set sslmode=prefer (TLS when offered) or disable",
        ),
        _ if certificate_error(error).is_some_and(|e| {
            matches!(
                e,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        }) => (
            "certificate verify failed: the host name does not match",
            "the server's certificate does not name the host in DATABASE_URL (sslmode=verify-full checks it): connect by a name the certificate lists, have the certificate issued for this host, or use sslmode=verify-ca (checks the issuer only)",
        ),
        _ if certificate_error(error).is_some() => (
            "certificate verify failed",
            "the server's certificate is not accepted with the CA in sslrootcert (database_sslrootcert): point it at the PEM file of the CA that issued the server's certificate, and check that certificate's dates",
        ),
        _ if text.contains("TLS") => (
            "TLS handshake failed",
            "see the TLS error; check the server's ssl settings and the sslmode in use",
        ),
        _ if text.contains("failed to lookup address") || text.contains("Name or service not known") => (
            "host not found",
            "the host name in DATABASE_URL does not resolve: fix it, or check DNS",
        ),
        _ => (
            "cannot reach the server",
            "check the host, port and network path to PostgreSQL",
        ),
    };
    format!("{cause}: {text}; {fix}")
}

/// The certificate check rustls refused the server's certificate with, if it did.
fn certificate_error(error: &tokio_postgres::Error) -> Option<&CertificateError> {
    std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .find_map(|e| {
        e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })
    })
    .and_then(|e| match e {
        rustls::Error::InvalidCertificate(certificate) => Some(certificate),
        _ => None,
    })
}

/// An error and its causes on one line (tokio-postgres's own `Display` shows some of them).
fn chain_text(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What the pool's gauges show, sampled at scrape (declared in `internal_events`).
impl From<&Pool> for PoolObserved {
    fn from(pool: &Pool) -> Self {
        let state = pool.state();
        PoolObserved {
            connections: state.connections,
            idle_connections: state.idle_connections,
            max_connections: pool.max_size(),
            waiting_checkouts: pool.waiting(),
            wait_time: state.statistics.get_wait_time,
            discarded_connections: state.statistics.connections_closed_broken,
        }
    }
}
