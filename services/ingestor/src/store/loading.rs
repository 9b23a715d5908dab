//! The statements of a loading transaction besides its rows and ledger entries: the session
//! settings it starts with, and the keepalive it sends while it waits for the reader.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::Transaction;

/// Planner settings of every loading transaction. For thousands of ids the planner would look
/// stored event ids up with a sequential scan (it prices index lookups as uncached random
/// reads, while the key being loaded is hot): measured at 1M rows and 8,192 ids, 96 ms scanning
/// against 45 ms through the index. The transaction's other statements are key lookups anyway.
const LOADING_SETTINGS: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;";

/// The `SET LOCAL`s a loading transaction starts with, in one round trip: the planner settings,
/// and a `lock_timeout` so a COPY that would wait for another in-flight transaction (another
/// loader or replica inserting the same event id) gives up and the file is deferred instead of
/// this transaction idling until the other one commits (see `load_file`).
///
/// # Errors
/// On a database error.
pub async fn apply_settings(tx: &Transaction<'_>, conflict_wait: Duration) -> anyhow::Result<()> {
    let mut sql = LOADING_SETTINGS.to_owned();
    if !conflict_wait.is_zero() {
        sql.push_str(&format!(
            " SET LOCAL lock_timeout = '{}ms';",
            conflict_wait.as_millis()
        ));
    }
    tx.batch_execute(&sql)
        .await
        .context("cannot apply the loading transaction's settings")
}

/// Shows the server that a transaction waiting for the reader is alive (`SELECT 1`, never
/// during a COPY), so `idle_in_transaction_session_timeout` ends only a process that stopped.
///
/// # Errors
/// On a database error.
pub async fn keep_alive(tx: &Transaction<'_>) -> anyhow::Result<()> {
    tx.batch_execute("SELECT 1")
        .await
        .context("cannot keep the transaction alive while the file is read")
}
