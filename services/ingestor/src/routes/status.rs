//! `GET /status`: the operator's first questions over HTTP (the same report as
//! `ingestor status --json`, from [`crate::commands::status::collect_with`]), plus which build
//! and which instance answered, and when the report was gathered.
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
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::AppState;
use crate::commands::status::{collect_with, Failure, Status, STATUS_APPLICATION_NAME};
use crate::config::Settings;
use crate::source::Discovery;
use crate::store::connect_once;

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
    /// The `/status` body, or why it could not be gathered.
    report: Result<Value, String>,
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
        let settings = &self.inner.settings;
        let report = match tokio::time::timeout(GATHER_TIMEOUT, gatherer.gather(settings)).await {
            Ok(Ok(status)) => Ok(body(status, settings)),
            Ok(Err(e)) => {
                tracing::warn!(error.message = %e, error.cause_chain = ?e, "Status report failed");
                Err(format!("{e:#}"))
            }
            Err(_) => Err("database did not answer in time".to_owned()),
        };
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
    /// Lists the directory and reads the ledger through the kept session, opening it if needed.
    /// The session is kept only after a gathering that succeeded: one that failed or was cut
    /// short (a timeout, a client gone) may have left it mid-exchange, so it is dropped (which
    /// closes it) and the next gathering connects afresh.
    async fn gather(&mut self, settings: &Settings) -> anyhow::Result<Status> {
        let discovery = match self.discovery.take() {
            Some(discovery) => discovery,
            None => Discovery::unwatched(&settings.input_dir, settings.settle)?,
        };
        let discovery = &*self.discovery.insert(discovery);
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => connect_once(settings, STATUS_APPLICATION_NAME).await?,
        };
        let status = collect_with(settings, discovery, &client).await?;
        self.client = Some(client);
        Ok(status)
    }
}

fn body(status: Status, settings: &Settings) -> Value {
    let body = StatusBody::new(status, settings.instance_id.clone());
    // Serializing plain data into a Value cannot fail; should it, the reason is the answer.
    serde_json::to_value(body).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

/// The `/status` body.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    /// `CARGO_PKG_VERSION` of the running binary.
    pub version: &'static str,
    /// This replica's instance id (as recorded in the ledger).
    pub instance_id: String,
    /// When the report was gathered (RFC 3339, UTC): at most [`REFRESH_INTERVAL`] plus one
    /// gathering ago.
    pub as_of: String,
    /// The input directory's waiting files.
    pub backlog: Backlog,
    /// Time of the last committed file (RFC 3339, UTC), `null` before the first.
    pub last_commit: Option<String>,
    /// Totals over the ledger (within its retention).
    pub totals: Totals,
    /// The most recent failed files, newest first.
    pub recent_failures: Vec<Failure>,
}

/// Files waiting in the input directory.
#[derive(Debug, Serialize)]
pub struct Backlog {
    /// Files waiting.
    pub files: usize,
    /// Bytes waiting.
    pub bytes: u64,
    /// Age of the oldest waiting file in seconds (0 when none waits).
    pub oldest_age_seconds: f64,
}

/// Ledger totals; `lines = accepted + duplicates + rejected` over loaded files.
#[derive(Debug, Serialize)]
pub struct Totals {
    /// Files loaded.
    pub files_loaded: i64,
    /// Files failed as a whole.
    pub files_failed: i64,
    /// Data lines of loaded files.
    pub lines: i64,
    /// Rows inserted into `events`.
    pub accepted: i64,
    /// Rows whose event_id was already stored.
    pub duplicates: i64,
    /// Rows that broke the contract.
    pub rejected: i64,
}

impl StatusBody {
    fn new(status: Status, instance_id: String) -> Self {
        StatusBody {
            version: env!("CARGO_PKG_VERSION"),
            instance_id,
            as_of: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            backlog: Backlog {
                files: status.backlog_files,
                bytes: status.backlog_bytes,
                oldest_age_seconds: status.oldest_waiting_seconds,
            },
            last_commit: status.last_commit,
            totals: Totals {
                files_loaded: status.files_loaded,
                files_failed: status.files_failed,
                lines: status.lines,
                accepted: status.accepted,
                duplicates: status.duplicates,
                rejected: status.rejected,
            },
            recent_failures: status.recent_failures,
        }
    }
}

/// `GET /status`: 200 with [`StatusBody`] from the snapshot, or 503
/// `{"status": "unavailable", "reason": ..}` when the report could not be gathered within
/// [`GATHER_TIMEOUT`] (the database is unreachable, the input directory unreadable).
pub async fn status(State(state): State<AppState>) -> Response {
    let settings = &state.settings;
    let report = match tokio::time::timeout(REQUEST_TIMEOUT, state.status.get()).await {
        Ok(gathered) => gathered.report.clone(),
        Err(_) => Err("the status report did not complete in time".to_owned()),
    };
    match report {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "reason": reason,
                "version": env!("CARGO_PKG_VERSION"),
                "instance_id": settings.instance_id,
            })),
        )
            .into_response(),
    }
}
