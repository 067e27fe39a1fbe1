//! Liveness, readiness and metrics endpoints.
//!
//! Readiness checks Kafka (the log topic's metadata) and Valkey (PING). One check runs at a
//! time and its answer is reused for [`READY_CACHE`]: probes from many balancers cost one
//! metadata fetch a second, not one each. Failures are answered with a reason code; the
//! underlying error is logged, not sent.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use agentwire_kafka::KafkaError;

use crate::state::AppState;

/// How long each dependency check of `/readyz` may take.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a readiness answer is reused.
const READY_CACHE: Duration = Duration::from_secs(1);

/// The outcome of one dependency check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Check {
    Ok,
    /// It refused or dropped the connection, or answered with an error.
    Unreachable,
    /// It did not answer within [`READY_TIMEOUT`].
    Timeout,
    /// Kafka answers but the log topic does not exist (or has no partitions).
    TopicMissing,
}

#[derive(Clone, Copy, Debug)]
struct Readiness {
    kafka: Check,
    valkey: Check,
}

/// The latest readiness answer and when it was made.
#[derive(Debug, Default)]
pub struct ReadinessCache {
    last: tokio::sync::Mutex<Option<(Instant, Readiness)>>,
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: Kafka (the log topic's metadata) and Valkey (PING) both answer.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = {
        let mut last = state.readiness().last.lock().await;
        match *last {
            Some((at, readiness)) if at.elapsed() < READY_CACHE => readiness,
            _ => {
                let readiness = check(&state).await;
                *last = Some((Instant::now(), readiness));
                readiness
            }
        }
    };
    let describe = |c: Check| match c {
        Check::Ok => json!({"ok": true}),
        reason => json!({"ok": false, "reason": reason}),
    };
    let ready = readiness.kafka == Check::Ok && readiness.valkey == Check::Ok;
    let body = json!({
        "ready": ready,
        "kafka": describe(readiness.kafka),
        "valkey": describe(readiness.valkey),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn check(state: &AppState) -> Readiness {
    let (kafka, valkey) = tokio::join!(
        state.log().check_reachable(READY_TIMEOUT),
        tokio::time::timeout(READY_TIMEOUT, state.history().store().ping()),
    );
    let kafka = match kafka {
        Ok(()) => Check::Ok,
        Err(err) => {
            tracing::warn!(error = %err, "readiness: kafka check failed");
            match err {
                KafkaError::Timeout(_) => Check::Timeout,
                KafkaError::Admin(_) => Check::TopicMissing,
                _ => Check::Unreachable,
            }
        }
    };
    let valkey = match valkey {
        Ok(Ok(())) => Check::Ok,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness: valkey check failed");
            Check::Unreachable
        }
        Err(_) => {
            tracing::warn!(timeout = ?READY_TIMEOUT, "readiness: valkey did not answer");
            Check::Timeout
        }
    };
    Readiness { kafka, valkey }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> impl IntoResponse {
    agentwire_runtime::metrics::handle().render()
}
