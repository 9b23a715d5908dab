//! The HTTP surface: Prometheus metrics, health endpoints and the status report. Built as a
//! function so tests can drive the router without a socket.

mod health;
mod metrics;
mod status;

pub use status::{StatusSnapshot, REFRESH_INTERVAL};

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::config::Settings;
use crate::internal_events::Metrics;
use crate::readiness::Readiness;
use crate::store::Pool;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The database pool (readiness runs `SELECT 1` through it; `/metrics` reports its size).
    pub pool: Pool,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The service settings (`/status` reads the input directory and the ledger with them).
    pub settings: Arc<Settings>,
    /// Whether the loader runs and what blocks it, if anything (`/healthz`, `/readyz`).
    pub readiness: Readiness,
    /// The `/status` report, gathered at most once a second over at most one connection.
    pub status: StatusSnapshot,
}

/// The router: `/metrics`, `/healthz` and `/livez` (liveness), `/readyz` (readiness),
/// `/status` (backlog, ledger totals, recent failures, version).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(health::live))
        .route("/livez", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/status", get(status::status))
        .with_state(state)
}
