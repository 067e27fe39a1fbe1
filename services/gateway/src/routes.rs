//! The gateway's router: every path of the public API in one place (documented in
//! `docs/protocol.md` and served as OpenAPI at `/v1/openapi.json`).

use axum::Router;
use axum::http::Request;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{events_api, health, producers_api, ws};
use agentwire_protocol::ErrorCode;

/// The OpenAPI 3.1 description of the HTTP API.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Builds the router over `state`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(events_api::publish))
        .route(
            "/v1/sessions/{tenant}/{agent_type}/{session_id}/events",
            get(events_api::history),
        )
        .route(
            "/v1/producers/{tenant}/{producer_id}/epoch",
            post(producers_api::new_epoch),
        )
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(crate::tasks::routes())
        .merge(crate::registry::routes())
        .merge(crate::session_state::routes())
        .fallback(not_found)
        // After every route: it applies to the routes registered before it. The `Allow` header
        // is still set.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The span of one request: like tower-http's default, with the URI's `token` redacted.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        uri = %crate::auth::redact_uri(request.uri()),
        version = ?request.version(),
    )
}

async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see /v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method; see /v1/openapi.json",
    )
}

#[cfg(test)]
mod tests {
    use super::OPENAPI_JSON;

    #[test]
    fn the_openapi_document_parses_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/v1/events",
            "/v1/sessions/{tenant}/{agent_type}/{session_id}/events",
            "/v1/producers/{tenant}/{producer_id}/epoch",
            "/v1/ws",
            "/v1/openapi.json",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/tasks",
            "/v1/tasks/{tenant}/claim",
            "/v1/tasks/{tenant}/{id}",
            "/v1/tasks/{tenant}/{id}/complete",
            "/v1/tasks/{tenant}/{id}/fail",
            "/v1/tasks/{tenant}/{id}/heartbeat",
            "/v1/tasks/{tenant}/{id}/release",
            "/v1/tasks/{tenant}/{id}/cancel",
            "/v1/queues/{tenant}",
            "/v1/queues/{tenant}/{capability}",
            "/v1/dead-letters/{tenant}/{capability}",
            "/v1/dead-letters/{tenant}/{capability}/requeue",
            "/v1/dead-letters/{tenant}/{capability}/purge",
            "/v1/agents",
            "/v1/agents/{tenant}",
            "/v1/agents/{tenant}/{agent_id}",
            "/v1/agents/{tenant}/{agent_id}/heartbeat",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
        }
        for status in ["200", "400", "413", "415", "429", "503"] {
            assert!(
                doc["paths"]["/v1/events"]["post"]["responses"]
                    .get(status)
                    .is_some(),
                "POST /v1/events {status}"
            );
        }
    }
}
