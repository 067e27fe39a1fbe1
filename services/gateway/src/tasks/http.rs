//! The work queue's HTTP routes (documented in `docs/tasks.md` and the OpenAPI document):
//!
//! - `POST /v1/tasks`: one task (a JSON object) or a batch (a JSON array).
//! - `GET /v1/tasks/{tenant}/{id}`; `POST /v1/tasks/{tenant}/claim`;
//!   `POST /v1/tasks/{tenant}/{id}/{complete|fail|heartbeat|release|cancel}`.
//! - `GET /v1/queues/{tenant}[/{capability}]`: queue sizes.
//! - `GET /v1/dead-letters/{tenant}/{capability}`; `POST …/requeue`, `POST …/purge`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use agentwire_protocol::task::now_ms;
use agentwire_protocol::task_frames::{
    ClaimBody, CompleteBody, FailBody, HeartbeatBody, ReleaseBody, error_text, lease, status_fields,
};
use agentwire_protocol::{Capability, ClaimRequest, ErrorCode, TaskSpec, TaskView, Tenant};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// Most tasks one batch enqueues.
pub const MAX_BATCH: usize = 1000;
/// Most dead letters one listing returns.
const MAX_DEAD_LIST: usize = 1000;

/// The work queue's routes, merged into the gateway's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tasks", post(enqueue))
        .route("/v1/tasks/{tenant}/claim", post(claim))
        .route("/v1/tasks/{tenant}/{id}", get(task))
        .route("/v1/tasks/{tenant}/{id}/{action}", post(act))
        .route("/v1/queues/{tenant}", get(queues))
        .route("/v1/queues/{tenant}/{capability}", get(queue))
        .route("/v1/dead-letters/{tenant}/{capability}", get(dead_letters))
        .route(
            "/v1/dead-letters/{tenant}/{capability}/{action}",
            post(settle_dead),
        )
}

/// The request body, or the common error for one too large (axum's body limit) or broken.
fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::PayloadTooLarge
        } else {
            ErrorCode::Malformed
        };
        ApiError::new(code, e.body_text())
    })
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("the body is not valid: {e}")))
}

fn path<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::new(ErrorCode::InvalidField, e.body_text()))
}

fn tenant(name: String) -> Result<Tenant, ApiError> {
    Ok(Tenant::new(name)?)
}

fn task_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text)
        .map_err(|e| ApiError::new(ErrorCode::InvalidField, format!("id is not a task id: {e}")))
}

/// `POST /v1/tasks`: a task object answers one ack (201), an array answers an array of acks
/// in order. Every task is validated and allowed before any is written; a failure part way
/// through a batch answers 503 with the acks of the tasks written.
async fn enqueue(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let principal = principal?;
    let body = bytes(body)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(ErrorCode::Malformed, "the body is not UTF-8"))?;
    let batch = text.trim_start().starts_with('[');
    let specs: Vec<TaskSpec> = if batch {
        json(&body)?
    } else {
        vec![json(&body)?]
    };
    if specs.is_empty() || specs.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("a batch holds 1 to {MAX_BATCH} tasks"),
        ));
    }
    let now = now_ms();
    let docs = specs
        .into_iter()
        .map(|spec| super::admit(&principal, spec, now))
        .collect::<Result<Vec<_>, _>>()?;
    super::charge_quota(&state, &docs).await?;
    let queue = state.tasks().clone();
    // Enqueued by a task of its own: a client that goes away mid-batch leaves nothing half
    // reserved. Tasks of one batch are appended concurrently (each keyed by its own id).
    let acks = tokio::spawn(async move {
        futures::future::join_all(docs.into_iter().map(|doc| queue.enqueue(doc))).await
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("the enqueue task failed: {e}")))?;
    let mut written = Vec::with_capacity(acks.len());
    let mut first_error = None;
    for ack in acks {
        match ack {
            Ok(ack) => written.push(ack),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    if let Some(err) = first_error {
        let values: Vec<serde_json::Value> = written
            .iter()
            .filter_map(|a| serde_json::to_value(a).ok())
            .collect();
        return Ok(crate::error::error_response(
            &err,
            (!values.is_empty()).then_some(values.as_slice()),
        ));
    }
    Ok(if batch {
        (StatusCode::CREATED, Json(written)).into_response()
    } else {
        (StatusCode::CREATED, Json(written.into_iter().next())).into_response()
    })
}

async fn task(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<TaskView>, ApiError> {
    let principal = principal?;
    let (tenant_name, id) = path(p)?;
    let tenant = tenant(tenant_name)?;
    principal.check_tenant(&tenant)?;
    let mut view = state.tasks().get(&tenant, task_id(&id)?).await?;
    principal.check_task_reader(&tenant, &view.doc.capability)?;
    // A lease id is what a worker settles a task with: shown only to those who may consume.
    if principal
        .check_consume(&tenant, &view.doc.capability)
        .is_err()
    {
        view.status.lease_id = None;
    }
    Ok(Json(view))
}

/// `POST /v1/tasks/{tenant}/claim`: `{"tasks":[…]}`, each with its `lease_id` (none ready:
/// an empty list).
async fn claim(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = principal?;
    let tenant = tenant(path(p)?)?;
    let body: ClaimBody = json(&bytes(body)?)?;
    let request = ClaimRequest::new(body.capabilities, body.max, body.lease_ms, body.worker)?;
    for capability in &request.capabilities {
        principal.check_consume(&tenant, capability)?;
    }
    let tasks = state.tasks().claim(&tenant, &request).await?;
    let views: Vec<TaskView> = tasks
        .into_iter()
        .map(|t| TaskView {
            doc: t.doc,
            status: t.status,
        })
        .collect();
    Ok(Json(serde_json::json!({ "tasks": views })))
}

/// `POST /v1/tasks/{tenant}/{id}/{complete|fail|heartbeat|release|cancel}`.
async fn act(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = principal?;
    let body = bytes(body)?;
    let (tenant_name, id, action) = path(p)?;
    let tenant = tenant(tenant_name)?;
    let id = task_id(&id)?;
    let queue = state.tasks();
    let body = if body.is_empty() {
        &b"{}"[..]
    } else {
        &body[..]
    };
    let status = match action.as_str() {
        "complete" => {
            principal.check_worker(&tenant)?;
            let body: CompleteBody = json(body)?;
            queue
                .complete(&tenant, id, &body.lease_id, body.result.as_deref())
                .await?
        }
        "fail" => {
            principal.check_worker(&tenant)?;
            let body: FailBody = json(body)?;
            error_text(&body.error)?;
            queue
                .fail(&tenant, id, &body.lease_id, &body.error, body.retryable)
                .await?
        }
        "release" => {
            principal.check_worker(&tenant)?;
            let body: ReleaseBody = json(body)?;
            queue.release(&tenant, id, &body.lease_id).await?
        }
        "heartbeat" => {
            principal.check_worker(&tenant)?;
            let body: HeartbeatBody = json(body)?;
            let at = queue
                .heartbeat(&tenant, id, &body.lease_id, lease(body.lease_ms)?)
                .await?;
            return Ok(Json(serde_json::json!({
                "task_id": id,
                "lease_expires_at_ms": at,
            })));
        }
        "cancel" => {
            principal.check_tenant(&tenant)?;
            let view = queue.get(&tenant, id).await?;
            principal.check_enqueue(&tenant, &view.doc.capability)?;
            queue.cancel(&tenant, id).await?
        }
        other => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "no task action {other:?}; expected complete, fail, heartbeat, release or cancel"
                ),
            ));
        }
    };
    let mut answer = status_fields(&status);
    answer["task_id"] = id.to_string().into();
    Ok(Json(answer))
}

async fn queues(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = principal?;
    let tenant = tenant(path(p)?)?;
    principal.check_tenant(&tenant)?;
    let mut stats = state.tasks().stats(&tenant, &[]).await?;
    stats.retain(|s| {
        Capability::new(s.capability.clone())
            .is_ok_and(|c| principal.check_task_reader(&tenant, &c).is_ok())
    });
    Ok(Json(serde_json::json!({ "queues": stats })))
}

async fn queue(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = principal?;
    let (tenant_name, capability) = path(p)?;
    let tenant = tenant(tenant_name)?;
    let capability = Capability::new(capability)?;
    principal.check_task_reader(&tenant, &capability)?;
    let stats = state.tasks().stats(&tenant, &[capability]).await?;
    Ok(Json(
        serde_json::to_value(stats.first()).unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    offset: usize,
    #[serde(default)]
    limit: Option<usize>,
}

async fn dead_letters(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = principal?;
    let (tenant_name, capability) = path(p)?;
    let tenant = tenant(tenant_name)?;
    let capability = Capability::new(capability)?;
    principal.check_consume(&tenant, &capability)?;
    let Query(page) = q.map_err(|e| ApiError::new(ErrorCode::InvalidField, e.body_text()))?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=MAX_DEAD_LIST).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("limit must be 1 to {MAX_DEAD_LIST}"),
        ));
    }
    let tasks = state
        .tasks()
        .dead_letters(&tenant, &capability, page.offset, limit)
        .await?;
    Ok(Json(serde_json::json!({ "tasks": tasks })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Ids {
    #[serde(default)]
    ids: Vec<Uuid>,
}

/// `POST /v1/dead-letters/{tenant}/{capability}/{requeue|purge}` with `{"ids":[…]}` (none:
/// up to 1,000 of them, oldest first).
async fn settle_dead(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = principal?;
    let body = bytes(body)?;
    let (tenant_name, capability, action) = path(p)?;
    let tenant = tenant(tenant_name)?;
    let capability = Capability::new(capability)?;
    principal.check_consume(&tenant, &capability)?;
    let purge = match action.as_str() {
        "requeue" => false,
        "purge" => true,
        other => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no dead-letter action {other:?}; expected requeue or purge"),
            ));
        }
    };
    let ids: Ids = if body.is_empty() {
        Ids::default()
    } else {
        json(&body)?
    };
    if ids.ids.len() > MAX_DEAD_LIST {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("ids holds at most {MAX_DEAD_LIST} task ids"),
        ));
    }
    let (done, refused) = state
        .tasks()
        .settle_dead(&tenant, &capability, &ids.ids, purge)
        .await?;
    let done: Vec<String> = done.iter().map(|t| t.id.to_string()).collect();
    let refused: Vec<serde_json::Value> = refused
        .into_iter()
        .map(|(id, state)| serde_json::json!({"id": id, "state": state}))
        .collect();
    Ok(Json(
        serde_json::json!({ "done": done, "refused": refused }),
    ))
}
