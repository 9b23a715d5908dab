//! `GET /metrics` in the Prometheus text format.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use crate::internal_events::PoolObserved;

/// Samples the scrape-time gauges (the database pool), then renders the registry.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    PoolObserved::from(&state.pool).emit(&state.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
