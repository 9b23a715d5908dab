//! `GET /status`: the operator's first questions over HTTP (the same report as
//! `ingestor status --json`, from [`crate::commands::status::collect`]), plus which build and
//! which instance answered.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use crate::commands::status::{collect, Failure, Status};

/// How long the report may take (listing the directory, connecting, two ledger queries) before
/// the endpoint answers 503: a scrape or a curl must not hang on an unreachable database.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The `/status` body.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    /// `CARGO_PKG_VERSION` of the running binary.
    pub version: &'static str,
    /// This replica's instance id (as recorded in the ledger).
    pub instance_id: String,
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

/// `GET /status`: 200 with [`StatusBody`], or 503 `{"status": "unavailable", "reason": ..}` when
/// the report cannot be gathered within [`STATUS_TIMEOUT`] (the database is unreachable, the
/// input directory unreadable).
pub async fn status(State(state): State<AppState>) -> Response {
    let settings = &state.settings;
    let report = match tokio::time::timeout(STATUS_TIMEOUT, collect(settings)).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => {
            tracing::warn!(error.message = %e, error.cause_chain = ?e, "Status report failed");
            Err(format!("{e:#}"))
        }
        Err(_) => Err("database did not answer in time".to_owned()),
    };
    match report {
        Ok(status) => {
            let body = StatusBody::new(status, settings.instance_id.clone());
            (StatusCode::OK, Json(body)).into_response()
        }
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
