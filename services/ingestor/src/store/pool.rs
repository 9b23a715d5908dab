//! The bb8 pool, with the session settings every ingestor connection gets server-side, a pool
//! that never takes back a connection whose protocol state is in doubt, and the one place that
//! decides what a database error means for the loader ([`classify`]).

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bb8::ManageConnection;
use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{Client, NoTls};

use crate::config::Settings;

/// The pool type used throughout the service.
pub type Pool = bb8::Pool<Manager>;

/// bb8-postgres's connection manager, with connections that can be marked in doubt: a connection
/// dropped while in doubt is closed by the pool instead of being handed to the next user.
#[derive(Debug)]
pub struct Manager(PostgresConnectionManager<NoTls>);

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
        let client = self.0.connect().await?;
        Ok(Connection {
            client,
            in_doubt: false,
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), tokio_postgres::Error> {
        self.0.is_valid(&mut conn.client).await
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
    let manager = Manager(PostgresConnectionManager::new(
        session_config(settings),
        NoTls,
    ));
    bb8::Pool::builder()
        .max_size(settings.pool_size)
        .min_idle(Some(0))
        .connection_timeout(settings.connect_timeout)
        // Connections broken by a database restart are detected on use (and dropped by bb8
        // because `is_closed()` is true), as are those left in doubt (see `Connection`);
        // checking on every checkout would add a round trip.
        .test_on_check_out(false)
        .build_unchecked(manager)
}

/// What a failed loading transaction means for the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// PostgreSQL refused a row's data (a genuine row-data SQLSTATE): the file responsible is
    /// narrowed down and quarantined.
    RowData,
    /// An error no retry fixes: the schema, the grants, the database or one of our own settings
    /// does not fit (the error PostgreSQL gave). An operator must act; until then the loader
    /// backs off and `/readyz` says why it is not ready. Never a reason to quarantine a file.
    Blocking(&'a DbError),
    /// Anything else (connection lost, timeouts, locks, restarts): retried with backoff.
    Transient,
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
    let Some(db) = error.chain().find_map(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
    }) else {
        return Failure::Transient;
    };
    let code = db.code().code();
    if code.starts_with("42") || BLOCKING_STATES.contains(&code) {
        Failure::Blocking(db)
    } else if ROW_DATA_STATES.contains(&code) {
        Failure::RowData
    } else {
        Failure::Transient
    }
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

/// One direct connection for an operator command, named `app_name` in `pg_stat_activity`.
///
/// # Errors
/// When the database cannot be reached.
pub async fn connect_once(
    settings: &Settings,
    app_name: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let mut config = session_config(settings);
    config.application_name(app_name);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(anyhow::Error::new)
        .map_err(|e| e.context(format!("cannot connect to {}", settings.database_display)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Command connection closed");
        }
    });
    Ok(client)
}
