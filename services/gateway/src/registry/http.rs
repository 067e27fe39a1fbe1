//! The registry's HTTP routes (documented in `docs/coordination.md` and the OpenAPI
//! document):
//!
//! - `POST /v1/agents`: register (201 when it joined or changed, 200 when renewed).
//! - `POST /v1/agents/{tenant}/{agent_id}/heartbeat` `{"in_flight"?}`: 200, or 404 when the
//!   registration is unknown or expired (register again).
//! - `DELETE /v1/agents/{tenant}/{agent_id}`: 204, or 404.
//! - `GET /v1/agents/{tenant}[?capability=…]`: the live agents; `GET …/{agent_id}`: one.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use agentwire_protocol::task::now_ms;
use agentwire_protocol::{AgentId, Capability, ErrorCode, RegisterSpec, Tenant};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agents", post(register))
        .route("/v1/agents/{tenant}", get(discover))
        .route(
            "/v1/agents/{tenant}/{agent_id}",
            get(agent).delete(deregister),
        )
        .route("/v1/agents/{tenant}/{agent_id}/heartbeat", post(heartbeat))
}

fn body_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::new(ErrorCode::Malformed, e.body_text()))?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("the body is not valid: {e}")))
}

fn names(p: Result<Path<(String, String)>, PathRejection>) -> Result<(Tenant, AgentId), ApiError> {
    let Path((tenant, agent)) =
        p.map_err(|e| ApiError::new(ErrorCode::InvalidField, e.body_text()))?;
    Ok((Tenant::new(tenant)?, AgentId::new(agent)?))
}

fn not_found(tenant: &Tenant, agent: &AgentId) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no live registration of agent {agent} in tenant {tenant}; register again"),
    )
}

/// The tenant a registration is for: the one it names (which the token must allow), else
/// the token's.
pub fn tenant_of(principal: &Principal, named: Option<Tenant>) -> Result<Tenant, ApiError> {
    let tenant = named
        .or_else(|| principal.tenant().cloned())
        .ok_or_else(|| {
            ApiError::from(agentwire_protocol::ProtocolError::invalid(
                "tenant",
                "is required",
            ))
        })?;
    principal.check_tenant(&tenant)?;
    Ok(tenant)
}

/// Validates a registration and checks that `principal` may serve every capability it
/// names (the `consume` claim). HTTP and WebSocket.
pub fn admit(
    principal: &Principal,
    spec: RegisterSpec,
) -> Result<agentwire_protocol::Registration, ApiError> {
    let tenant = tenant_of(principal, spec.tenant.clone())?;
    let registration = spec.into_registration(tenant, principal.subject.clone(), now_ms())?;
    for capability in &registration.capabilities {
        principal.check_consume(&registration.tenant, capability)?;
    }
    Ok(registration)
}

async fn register(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let principal = principal?;
    let registration = admit(&principal, body_json(body)?)?;
    if let Some(live) = state
        .registry()
        .get(&registration.tenant, &registration.agent_id)
        .await?
    {
        super::check_owner(&principal, &live.registration)?;
    }
    let ack = state.registry().register(&registration).await?;
    let status = if ack.kind == "renewed" {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(ack)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    #[serde(default)]
    in_flight: Option<u32>,
}

async fn heartbeat(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = principal?;
    let (tenant, agent) = names(p)?;
    principal.check_tenant(&tenant)?;
    let body: HeartbeatBody = match body {
        Ok(bytes) if bytes.is_empty() => HeartbeatBody::default(),
        other => body_json(other)?,
    };
    let live = state
        .registry()
        .get(&tenant, &agent)
        .await?
        .ok_or_else(|| not_found(&tenant, &agent))?;
    super::check_owner(&principal, &live.registration)?;
    let expires = state
        .registry()
        .heartbeat(&tenant, &agent, body.in_flight)
        .await?
        .ok_or_else(|| not_found(&tenant, &agent))?;
    Ok(Json(serde_json::json!({ "expires_at_ms": expires })))
}

async fn deregister(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let principal = principal?;
    let (tenant, agent) = names(p)?;
    principal.check_tenant(&tenant)?;
    if let Some(live) = state.registry().get(&tenant, &agent).await? {
        super::check_owner(&principal, &live.registration)?;
    }
    if state.registry().deregister(&tenant, &agent).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&tenant, &agent))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoverQuery {
    capability: Option<String>,
}

async fn discover(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<DiscoverQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = principal?;
    let Path(tenant) = p.map_err(|e| ApiError::new(ErrorCode::InvalidField, e.body_text()))?;
    let tenant = Tenant::new(tenant)?;
    principal.check_tenant(&tenant)?;
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::InvalidField, e.body_text()))?;
    let capability = q.capability.map(Capability::new).transpose()?;
    let agents = state
        .registry()
        .discover(&tenant, capability.as_ref())
        .await?;
    Ok(Json(serde_json::json!({ "agents": agents })))
}

async fn agent(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<agentwire_protocol::AgentView>, ApiError> {
    let principal = principal?;
    let (tenant, agent) = names(p)?;
    principal.check_tenant(&tenant)?;
    let view = state
        .registry()
        .get(&tenant, &agent)
        .await?
        .ok_or_else(|| not_found(&tenant, &agent))?;
    Ok(Json(view))
}
