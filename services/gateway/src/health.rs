//! Liveness, readiness and metrics endpoints.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// How long each dependency check of `/readyz` may take.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: Kafka (the log topic's metadata) and Valkey (PING) both answer.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let kafka = state.log().check_reachable(READY_TIMEOUT).await;
    let valkey = match tokio::time::timeout(READY_TIMEOUT, state.history().store().ping()).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {READY_TIMEOUT:?}")),
    };
    let describe = |r: Result<(), String>| match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    let ready = kafka.is_ok() && valkey.is_ok();
    let body = json!({
        "ready": ready,
        "kafka": describe(kafka.map_err(|e| e.to_string())),
        "valkey": describe(valkey),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> impl IntoResponse {
    agentwire_runtime::metrics::handle().render()
}
