//! A session's state over HTTP (documented in `docs/coordination.md` and the OpenAPI
//! document): `GET /v1/sessions/{tenant}/{agent_type}/{session_id}/state` (the `subscribe`
//! claim) and `POST …/state` with a [`StateUpdate`] (the `publish` claim).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::routing::get;

use agentwire_protocol::session_state::{SessionState, StateUpdate};
use agentwire_protocol::{ErrorCode, SessionKey};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::session_state::StateAck;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/sessions/{tenant}/{agent_type}/{session_id}/state",
        get(read).post(update),
    )
}

fn session(
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<SessionKey, ApiError> {
    let Path((tenant, agent_type, session_id)) =
        p.map_err(|e| ApiError::new(ErrorCode::InvalidField, e.body_text()))?;
    Ok(SessionKey::parse_parts(&tenant, &agent_type, &session_id)?)
}

async fn read(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Json<SessionState>, ApiError> {
    let principal = principal?;
    let session = session(p)?;
    principal.check_subscribe(&session)?;
    Ok(Json(state.session_states().get(&session).await?))
}

async fn update(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StateAck>, ApiError> {
    let principal = principal?;
    let session = session(p)?;
    principal.check_publish(&session)?;
    let body = body.map_err(|e| ApiError::new(ErrorCode::Malformed, e.body_text()))?;
    let update: StateUpdate = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::Malformed,
            format!("the body is not a state update: {e}"),
        )
    })?;
    Ok(Json(
        state.session_states().update(&session, &update).await?,
    ))
}
