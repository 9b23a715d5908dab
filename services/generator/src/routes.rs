//! The HTTP surface: `/metrics` in the Prometheus text format, and liveness on `/livez` and
//! `/healthz`. Built by a function so tests can serve it on a listener of their own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::internal_events::Metrics;

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The metrics registry.
    pub metrics: Metrics,
    /// Whether the write loop is still running.
    pub writer_alive: Arc<AtomicBool>,
}

/// The router: `/metrics`, and `/livez` and `/healthz` (liveness).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(live))
        .route("/healthz", get(live))
        .with_state(state)
}

/// `GET /metrics`: renders the registry.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.render(),
    )
}

/// `GET /livez`, `GET /healthz`: 200 while the write loop runs, 503 once it has stopped (the
/// server only outlives it for the moment it takes to shut down).
async fn live(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.writer_alive.load(Ordering::Relaxed) {
        (StatusCode::OK, Json(json!({ "status": "alive" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "dead", "reason": "write loop is not running" })),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Serves the router on a free port; returns the port and the liveness flag.
    async fn serve() -> (u16, Arc<AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let writer_alive = Arc::new(AtomicBool::new(true));
        let state = AppState {
            metrics: Metrics::new().unwrap(),
            writer_alive: writer_alive.clone(),
        };
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        (port, writer_alive)
    }

    /// A raw HTTP/1.0 GET: (status, whole response).
    async fn get(port: u16, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, response)
    }

    #[tokio::test]
    async fn livez_and_healthz_answer_alive_while_the_write_loop_runs() {
        let (port, writer_alive) = serve().await;
        for path in ["/livez", "/healthz"] {
            let (status, response) = get(port, path).await;
            assert_eq!(status, 200, "{response}");
            assert!(response.ends_with(r#"{"status":"alive"}"#), "{response}");
        }
        writer_alive.store(false, Ordering::Relaxed);
        let (status, response) = get(port, "/livez").await;
        assert_eq!(status, 503, "{response}");
    }

    #[tokio::test]
    async fn metrics_answers_in_the_prometheus_text_format() {
        let (port, _) = serve().await;
        let (status, response) = get(port, "/metrics").await;
        assert_eq!(status, 200, "{response}");
        assert!(
            response
                .to_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{response}"
        );
        assert!(
            response.contains("# TYPE generator_files_total counter"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn an_unknown_path_is_a_404() {
        let (port, _) = serve().await;
        assert_eq!(get(port, "/readyz").await.0, 404);
    }
}
