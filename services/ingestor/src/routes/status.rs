//! `GET /status`: the operator's first questions over HTTP, the [`StatusReport`] that
//! `ingestor status --json` prints too, with the answering instance's id.
//!
//! Answered from a snapshot: the report is gathered at most once per [`REFRESH_INTERVAL`], by one
//! request at a time (the others wait for it and share it), over one database session kept
//! between gatherings. Gathering it per request opened a database connection per request: 200
//! concurrent clients held 38 backends and left the server's other clients "too many clients".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::AppState;
use crate::config::Settings;
use crate::source::Discovery;
use crate::status::{backlog, StatusReport, STATUS_APPLICATION_NAME};
use crate::store::{connect_once, ledger_report};

/// A snapshot younger than this is served as it is; an older one is gathered again by the next
/// request. So the database sees at most one report's queries per second, however many clients
/// ask.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How long gathering the report may take (listing the directory, connecting, two ledger
/// queries) before it counts as failed: a scrape or a curl must not hang on an unreachable
/// database. A failure is a snapshot too (served as 503 until the next gathering).
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a request waits: for a gathering in progress, then (rarely) its own. Each is
/// bounded by [`GATHER_TIMEOUT`], so this is a safety net.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared `/status` snapshot and the single gatherer behind it.
#[derive(Clone)]
pub struct StatusSnapshot {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<Settings>,
    /// The latest gathering. A std mutex: held only to copy the `Arc`, never across an await.
    latest: Mutex<Option<Arc<Gathered>>>,
    /// The single flight. A tokio mutex because it is held across the gathering's awaits: the
    /// requests that find the snapshot stale queue here, and all but the first find it fresh.
    gatherer: tokio::sync::Mutex<Gatherer>,
}

/// One gathering's outcome.
struct Gathered {
    /// When it ended (its age decides whether it is served).
    at: Instant,
    /// Counts gatherings: a request that waited for the gatherer serves whatever was gathered
    /// meanwhile instead of gathering again.
    generation: u64,
    /// The report (complete, or with the reason a part is missing).
    report: StatusReport,
}

/// What gathering keeps between runs: the listing (an unwatched [`Discovery`]: no inotify
/// instance, and it remembers when future-dated files were first seen) and the database session
/// (`application_name` `ingestor-status`; reopened when it broke or a gathering failed).
#[derive(Default)]
struct Gatherer {
    discovery: Option<Discovery>,
    client: Option<tokio_postgres::Client>,
}

impl StatusSnapshot {
    /// An empty snapshot: the first request gathers it.
    pub fn new(settings: Arc<Settings>) -> Self {
        StatusSnapshot {
            inner: Arc::new(Inner {
                settings,
                latest: Mutex::new(None),
                gatherer: tokio::sync::Mutex::new(Gatherer::default()),
            }),
        }
    }

    fn latest(&self) -> Option<Arc<Gathered>> {
        self.inner
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The report: the snapshot if it is fresh, else the one gathered by whoever gathers now
    /// (this request, or the one it waited for).
    async fn get(&self) -> Arc<Gathered> {
        let seen = self.latest();
        if let Some(fresh) = seen.as_ref().filter(|g| g.at.elapsed() < REFRESH_INTERVAL) {
            return fresh.clone();
        }
        let seen_generation = seen.as_ref().map_or(0, |g| g.generation);
        let mut gatherer = self.inner.gatherer.lock().await;
        if let Some(latest) = self.latest() {
            if latest.generation != seen_generation || latest.at.elapsed() < REFRESH_INTERVAL {
                return latest;
            }
        }
        let report = gatherer.gather(&self.inner.settings).await;
        if let Some(error) = report
            .directory_error
            .as_ref()
            .or(report.database_error.as_ref())
        {
            tracing::warn!(error.message = %error, "Status report failed");
        }
        let gathered = Arc::new(Gathered {
            at: Instant::now(),
            generation: seen_generation + 1,
            report,
        });
        *self.inner.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(gathered.clone());
        gathered
    }
}

impl Gatherer {
    /// Lists the directory and reads the ledger through the kept session, opening it if needed;
    /// the ledger part within [`GATHER_TIMEOUT`]. The session is kept only after a reading that
    /// succeeded: one that failed or was cut short (a timeout, a client gone) may have left it
    /// mid-exchange, so it is dropped (which closes it) and the next gathering connects afresh.
    async fn gather(&mut self, settings: &Settings) -> StatusReport {
        // The Kafka source has no directory: its backlog is the consumer lag (`/metrics`).
        let backlog = settings.kafka.is_none().then(|| {
            match self.discovery.take() {
                Some(discovery) => Ok(discovery),
                None => Discovery::unwatched(&settings.input_dir, settings.settle),
            }
            .and_then(|discovery| backlog(settings, self.discovery.insert(discovery)))
        });
        let ledger = match tokio::time::timeout(GATHER_TIMEOUT, self.read_ledger(settings)).await {
            Ok(ledger) => ledger,
            Err(_) => Err(anyhow::anyhow!(
                "the database did not answer within {GATHER_TIMEOUT:?}"
            )),
        };
        StatusReport::new(Some(settings.instance_id.clone()), backlog, ledger)
    }

    async fn read_ledger(
        &mut self,
        settings: &Settings,
    ) -> anyhow::Result<ledger_report::LedgerSummary> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => connect_once(settings, STATUS_APPLICATION_NAME).await?,
        };
        let summary = ledger_report::summary(&client, settings.kafka.is_some()).await?;
        self.client = Some(client);
        Ok(summary)
    }
}

/// `GET /status`: 200 with the [`StatusReport`] from the snapshot, or 503 with the same report
/// when a part could not be read within [`GATHER_TIMEOUT`] (the database is unreachable, the
/// input directory unreadable): its `database_error` or `directory_error` says why.
pub async fn status(State(state): State<AppState>) -> Response {
    let report = match tokio::time::timeout(REQUEST_TIMEOUT, state.status.get()).await {
        Ok(gathered) => gathered.report.clone(),
        Err(_) => StatusReport::new(
            Some(state.settings.instance_id.clone()),
            state.settings.kafka.is_none().then(|| {
                Err(anyhow::anyhow!(
                    "the status report did not complete in time"
                ))
            }),
            Err(anyhow::anyhow!(
                "the status report did not complete in time"
            )),
        ),
    };
    let code = if report.is_complete() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}
