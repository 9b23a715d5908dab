//! Presence: how a running ingestor proves to `ingestor reset` that it runs.
//!
//! Each running ingestor holds a session of its own (`application_name` `ingestor-presence`)
//! with a shared, session-level advisory lock on [`RUNNING_LOCK_KEY`]. `reset` takes the same
//! lock exclusively before it empties the tables: while any ingestor runs it cannot, whatever
//! the ingestors' `application_name`, and whether their pools are busy or idle (idle pools close
//! their connections, which is why counting `pg_stat_activity` rows was not enough). Advisory
//! locks are per database, so ingestors of other databases on the server do not count.
//!
//! The lock is lost when its session is (a database restart, a network cut). A reset could then
//! run unseen, and the loaders' memory of recently committed ids would name events that are no
//! longer stored: so loaders load only while the lock is held, and when it is taken again after
//! a loss, that memory is forgotten (see [`Presence::before_batch`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::connect_once;
use super::recent_ids::CommittedIds;
use crate::config::Settings;
use crate::internal_events::{LoadingWaitsForPresence, Metrics};

/// The advisory lock key ingestors hold shared while they run, and `reset` takes exclusively.
/// An arbitrary constant (the ASCII of "ingest!!"), unlikely to collide with other users'
/// advisory locks; the per-file locks of the ledger are hashes and never this value.
pub const RUNNING_LOCK_KEY: i64 = 0x696e_6765_7374_2121;

/// `application_name` of the presence session.
pub const PRESENCE_APPLICATION_NAME: &str = "ingestor-presence";

/// How often the held session is checked (and kept alive through NATs and proxies).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The state of the presence lock: held or not, and how many times it has been taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    held: bool,
    /// Incremented each time the lock is taken; a change means it was lost in between.
    generation: u64,
}

/// The loaders' view of the presence lock.
#[derive(Clone)]
pub struct Presence {
    state: watch::Receiver<Held>,
}

/// What a loader loop saw last.
#[derive(Debug, Default)]
pub struct SeenPresence(u64);

impl Presence {
    /// Starts holding the lock on a task of its own, until `cancel`.
    pub fn spawn(settings: Arc<Settings>, cancel: CancellationToken) -> Self {
        let (sender, state) = watch::channel(Held::default());
        tokio::spawn(hold(settings, sender, cancel));
        Presence { state }
    }

    /// Waits until the lock is held (or `cancel` fires); then, if it was taken again since
    /// `seen` (lost in between, so a reset may have run unseen), forgets the committed ids.
    pub async fn before_batch(
        &self,
        seen: &mut SeenPresence,
        committed: &CommittedIds,
        metrics: &Metrics,
        cancel: &CancellationToken,
    ) {
        let mut state = self.state.clone();
        if !state.borrow().held {
            LoadingWaitsForPresence.emit(metrics);
        }
        let held = tokio::select! {
            held = state.wait_for(|s| s.held) => held.map(|h| *h).ok(),
            () = cancel.cancelled() => None,
        };
        if let Some(held) = held {
            if seen.0 != 0 && seen.0 != held.generation {
                committed.forget_all();
            }
            seen.0 = held.generation;
        }
    }
}

/// Takes the lock, keeps its session alive, and takes it again whenever the session is lost.
async fn hold(settings: Arc<Settings>, sender: watch::Sender<Held>, cancel: CancellationToken) {
    let mut retry_in = settings.retry_initial;
    while !cancel.is_cancelled() {
        match take(&settings).await {
            Ok(client) => {
                retry_in = settings.retry_initial;
                sender.send_modify(|s| {
                    s.held = true;
                    s.generation += 1;
                });
                keep(&client, &cancel).await;
                sender.send_modify(|s| s.held = false);
            }
            Err(e) => {
                tracing::warn!(error.message = %format!("{e:#}"), retry_in_ms = retry_in.as_millis() as u64, "Cannot take the presence lock that keeps `ingestor reset` away; loading waits until it is held");
                retry_in = (retry_in * 2).min(settings.retry_max);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            () = cancel.cancelled() => {}
        }
    }
}

/// A session holding the shared lock. Waits while `reset` holds it exclusively.
async fn take(settings: &Settings) -> anyhow::Result<tokio_postgres::Client> {
    let client = connect_once(settings, PRESENCE_APPLICATION_NAME).await?;
    // The session's statement_timeout bounds the wait behind a running reset.
    client
        .execute("SELECT pg_advisory_lock_shared($1)", &[&RUNNING_LOCK_KEY])
        .await
        .map_err(|e| anyhow::Error::new(e).context("cannot take the presence lock"))?;
    Ok(client)
}

/// Returns when the session is lost or `cancel` fires.
async fn keep(client: &tokio_postgres::Client, cancel: &CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = cancel.cancelled() => return,
        }
        if let Err(e) = client.simple_query("SELECT 1").await {
            tracing::warn!(error = %e, "Lost the presence session; loading waits until the lock is held again");
            return;
        }
    }
}

/// Whether an ingestor holds the presence lock on the database `client` is connected to; if
/// none does, `client`'s session now holds it exclusively (until the session ends), so none can
/// start loading meanwhile.
///
/// # Errors
/// On a database error.
pub async fn lock_out_ingestors(client: &tokio_postgres::Client) -> anyhow::Result<bool> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RUNNING_LOCK_KEY])
        .await
        .map_err(|e| anyhow::Error::new(e).context("cannot check for running ingestors"))?;
    Ok(row.get(0))
}
