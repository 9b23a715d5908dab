//! Liveness never touches the database (an outage must not make an orchestrator restart every
//! replica); readiness does, and says why it is not ready, including when the database answers
//! but refuses the loader's work in a way no retry fixes.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// How long readiness waits for the database before answering 503.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`, `GET /livez`: the process answers and its loader tasks run.
pub async fn live(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.readiness.loader_alive() {
        (StatusCode::OK, Json(json!({ "status": "alive" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "dead", "reason": "loader is not running" })),
        )
    }
}

/// `GET /readyz`: the loader runs, its last batch did not fail for a reason no retry fixes
/// (a missing table, column or privilege, a setting PostgreSQL rejects), and the database
/// answers, in UTF8; and the source can deliver work (a Kafka source reaches its cluster).
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut database_answered = None;
    let verdict = if !state.readiness.loader_alive() {
        Err("loader is not running".to_owned())
    } else if let Some(reason) = state.readiness.blocked_reason() {
        Err(reason)
    } else if let Some(reason) = state.readiness.source_down_reason() {
        Err(reason)
    } else {
        let checked = check_database(&state).await;
        database_answered = Some(checked.is_ok());
        checked
    };
    state.readiness.probed(database_answered, verdict.is_ok());
    match verdict {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": reason })),
        ),
    }
}

async fn check_database(state: &AppState) -> Result<(), String> {
    let check = async {
        let mut conn = state
            .pool
            .get()
            .await
            .map_err(|e| format!("database unavailable: {e}"))?;
        // A check cut short by the timeout below leaves its reply unread: in doubt until it
        // answered, so such a connection is closed rather than handed to a loader.
        conn.doubt();
        let encoding = crate::store::server_encoding(&conn)
            .await
            .map_err(|e| format!("database unavailable: {e}"))?;
        conn.settle();
        crate::store::encoding_problem(&encoding).map_or(Ok(()), Err)
    };
    // The pool keeps trying to connect for up to `connect_timeout_ms`, longer than readiness
    // waits: a server that refuses (a wrong password, a missing database, too many clients,
    // nothing listening) is named from the pool's latest failed attempt, not as a slow answer.
    tokio::time::timeout(READY_CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| {
            Err(state.pool.last_connect_failure().map_or_else(
                || "database did not answer in time".to_owned(),
                |cause| format!("database unavailable: cannot connect to the database: {cause}"),
            ))
        })
}
