//! The bb8 pool, with the session settings every ingestor connection gets server-side.

use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::config::Settings;

/// The pool type used throughout the service.
pub type Pool = bb8::Pool<PostgresConnectionManager<NoTls>>;

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
    let manager = PostgresConnectionManager::new(session_config(settings), NoTls);
    bb8::Pool::builder()
        .max_size(settings.pool_size)
        .min_idle(Some(0))
        .connection_timeout(settings.connect_timeout)
        // Connections broken by a database restart are detected on use (and dropped by bb8
        // because `is_closed()` is true); checking on every checkout would add a round trip.
        .test_on_check_out(false)
        .build_unchecked(manager)
}

/// Whether PostgreSQL refused the data itself (SQLSTATE class 22, data exception, or 23,
/// integrity violation), as opposed to a connection, timeout, privilege or schema problem.
/// A unique violation (23505) is not a data error here: it means another transaction stored
/// the same event concurrently, and a retry will count it as a duplicate.
pub fn is_data_error(error: &anyhow::Error) -> bool {
    sqlstates(error).any(|code| {
        let code = code.code();
        (code.starts_with("22") || code.starts_with("23")) && code != "23505"
    })
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
