//! The work-queue ops a client sends (HTTP bodies and WebSocket `op`s, JSON only) and the
//! frames the server answers them with. Field names are the same over both transports.

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{Capability, Tenant};
use crate::task::{MAX_TEXT_LEN, TaskSpec, TaskStatus, TaskView};

/// Default lease of a claim or a consume: 30 s.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Shortest and longest lease a worker may ask for.
pub const LEASE_RANGE_MS: std::ops::RangeInclusive<u64> = 1..=3_600_000;
/// Most tasks one claim hands out, and the largest prefetch of a consume.
pub const MAX_CLAIM: usize = 256;

/// `POST /v1/tasks/{tenant}/claim`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub max: Option<usize>,
    #[serde(default)]
    pub lease_ms: Option<u64>,
    #[serde(default)]
    pub worker: Option<String>,
}

/// `…/complete`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub lease_id: String,
    #[serde(default)]
    pub result: Option<Box<RawValue>>,
}

/// `…/fail`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    pub lease_id: String,
    pub error: String,
    #[serde(default = "yes")]
    pub retryable: bool,
}

fn yes() -> bool {
    true
}

/// `…/heartbeat`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub lease_id: String,
    #[serde(default)]
    pub lease_ms: Option<u64>,
}

/// `…/release`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub lease_id: String,
}

/// A validated claim: capabilities, how many, for how long, by whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    pub capabilities: Vec<Capability>,
    pub max: usize,
    pub lease_ms: u64,
    pub worker: String,
}

impl ClaimRequest {
    /// Validates the parts of a claim or consume (`max` is the prefetch of a consume).
    pub fn new(
        capabilities: Vec<String>,
        max: Option<usize>,
        lease_ms: Option<u64>,
        worker: Option<String>,
    ) -> Result<Self, ProtocolError> {
        if capabilities.is_empty() || capabilities.len() > 32 {
            return Err(ProtocolError::invalid(
                "capabilities",
                "must name 1 to 32 capabilities",
            ));
        }
        let capabilities = capabilities
            .into_iter()
            .map(Capability::new)
            .collect::<Result<Vec<_>, _>>()?;
        let max = max.unwrap_or(1);
        if !(1..=MAX_CLAIM).contains(&max) {
            return Err(ProtocolError::invalid(
                "max",
                format!("must be 1 to {MAX_CLAIM}"),
            ));
        }
        let lease_ms = lease(lease_ms)?;
        let worker = worker.unwrap_or_default();
        if worker.len() > MAX_TEXT_LEN {
            return Err(ProtocolError::invalid(
                "worker",
                format!("must be at most {MAX_TEXT_LEN} bytes"),
            ));
        }
        Ok(Self {
            capabilities,
            max,
            lease_ms,
            worker,
        })
    }
}

/// Validates a lease length (absent: the default).
pub fn lease(lease_ms: Option<u64>) -> Result<u64, ProtocolError> {
    let lease_ms = lease_ms.unwrap_or(DEFAULT_LEASE_MS);
    if LEASE_RANGE_MS.contains(&lease_ms) {
        Ok(lease_ms)
    } else {
        Err(ProtocolError::invalid(
            "lease_ms",
            format!(
                "must be {} to {}",
                LEASE_RANGE_MS.start(),
                LEASE_RANGE_MS.end()
            ),
        ))
    }
}

/// Checks a failure's error text.
pub fn error_text(error: &str) -> Result<(), ProtocolError> {
    if error.is_empty() || error.len() > MAX_TEXT_LEN {
        return Err(ProtocolError::invalid(
            "error",
            format!("must be 1 to {MAX_TEXT_LEN} bytes"),
        ));
    }
    Ok(())
}

/// A work-queue op over the WebSocket. Every op may carry an `id` of the client's choosing,
/// echoed in its answer (`task_ack` or `error`).
#[derive(Clone, Debug)]
pub enum TaskOp {
    Enqueue {
        id: Option<String>,
        task: Box<TaskSpec>,
    },
    /// Push delivery: tasks of `capabilities` are sent as `task` frames as they become ready,
    /// never more unsettled at once than `prefetch`.
    Consume {
        id: Option<String>,
        /// The tenant (needed only with authentication off; else the token's).
        tenant: Option<Tenant>,
        claim: ClaimRequest,
    },
    /// Stops push delivery (tasks already sent stay leased until settled).
    StopConsuming { id: Option<String> },
    Complete {
        id: Option<String>,
        /// The tenant (needed only with authentication off; else the token's).
        tenant: Option<Tenant>,
        task_id: Uuid,
        lease_id: String,
        result: Option<Box<RawValue>>,
    },
    Fail {
        id: Option<String>,
        /// The tenant (needed only with authentication off; else the token's).
        tenant: Option<Tenant>,
        task_id: Uuid,
        lease_id: String,
        error: String,
        retryable: bool,
    },
    Heartbeat {
        id: Option<String>,
        /// The tenant (needed only with authentication off; else the token's).
        tenant: Option<Tenant>,
        task_id: Uuid,
        lease_id: String,
        lease_ms: u64,
    },
    Release {
        id: Option<String>,
        /// The tenant (needed only with authentication off; else the token's).
        tenant: Option<Tenant>,
        task_id: Uuid,
        lease_id: String,
    },
}

/// The WebSocket ops of the work queue.
pub const TASK_OPS: [&str; 7] = [
    "enqueue",
    "consume",
    "stop_consuming",
    "complete",
    "fail",
    "heartbeat",
    "release",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskOpIn {
    op: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    task: Option<Box<RawValue>>,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default)]
    lease_ms: Option<u64>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    prefetch: Option<usize>,
    #[serde(default)]
    worker: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

impl TaskOp {
    /// Whether a JSON frame's `op` is a work-queue op (checked before decoding it as one).
    pub fn is_task_op(op: &str) -> bool {
        TASK_OPS.contains(&op)
    }

    /// Decodes a JSON frame whose `op` is one of [`TASK_OPS`]. On an error, the request id
    /// (when it could be read) comes with it.
    pub fn from_json(text: &str) -> Result<Self, (Option<String>, ProtocolError)> {
        let raw: TaskOpIn = serde_json::from_str(text).map_err(|e| {
            (
                None,
                ProtocolError::malformed(format!("not a valid task frame: {e}")),
            )
        })?;
        let id = raw.id.clone();
        Self::from_raw(raw).map_err(|e| (id, e))
    }

    fn from_raw(raw: TaskOpIn) -> Result<Self, ProtocolError> {
        let id = raw.id;
        let tenant = raw.tenant.clone().map(Tenant::new).transpose()?;
        let task_id = || -> Result<Uuid, ProtocolError> {
            let text = raw
                .task_id
                .as_deref()
                .ok_or_else(|| ProtocolError::invalid("task_id", "is required"))?;
            Uuid::parse_str(text)
                .map_err(|e| ProtocolError::invalid("task_id", format!("is not a task id: {e}")))
        };
        let lease_id = || {
            raw.lease_id
                .clone()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| ProtocolError::invalid("lease_id", "is required"))
        };
        Ok(match raw.op.as_str() {
            "enqueue" => {
                let task = raw
                    .task
                    .as_ref()
                    .ok_or_else(|| ProtocolError::invalid("task", "is required"))?;
                let spec: TaskSpec = serde_json::from_str(task.get())
                    .map_err(|e| ProtocolError::invalid("task", format!("is not a task: {e}")))?;
                TaskOp::Enqueue {
                    id,
                    task: Box::new(spec),
                }
            }
            "consume" => TaskOp::Consume {
                claim: ClaimRequest::new(
                    raw.capabilities.clone().unwrap_or_default(),
                    raw.prefetch.or(Some(1)),
                    raw.lease_ms,
                    raw.worker.clone(),
                )
                .map_err(|e| {
                    if e.field() == Some("max") {
                        ProtocolError::invalid("prefetch", format!("must be 1 to {MAX_CLAIM}"))
                    } else {
                        e
                    }
                })?,
                id,
                tenant,
            },
            "stop_consuming" => TaskOp::StopConsuming { id },
            "complete" => TaskOp::Complete {
                task_id: task_id()?,
                lease_id: lease_id()?,
                result: raw.result,
                id,
                tenant,
            },
            "fail" => {
                let error = raw.error.clone().unwrap_or_default();
                error_text(&error)?;
                TaskOp::Fail {
                    task_id: task_id()?,
                    lease_id: lease_id()?,
                    error,
                    retryable: raw.retryable.unwrap_or(true),
                    id,
                    tenant,
                }
            }
            "heartbeat" => TaskOp::Heartbeat {
                task_id: task_id()?,
                lease_id: lease_id()?,
                lease_ms: lease(raw.lease_ms)?,
                id,
                tenant,
            },
            "release" => TaskOp::Release {
                task_id: task_id()?,
                lease_id: lease_id()?,
                id,
                tenant,
            },
            other => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownOp,
                    format!("{other:?} is not a task op"),
                ));
            }
        })
    }

    /// The client's request id.
    pub fn id(&self) -> Option<&str> {
        match self {
            TaskOp::Enqueue { id, .. }
            | TaskOp::Consume { id, .. }
            | TaskOp::StopConsuming { id }
            | TaskOp::Complete { id, .. }
            | TaskOp::Fail { id, .. }
            | TaskOp::Heartbeat { id, .. }
            | TaskOp::Release { id, .. } => id.as_deref(),
        }
    }
}

/// A claimed task as a worker receives it: the task, its attempt, lease and lease expiry
/// (`{"op":"task","task":{…}}` over the WebSocket; the items of a claim's `tasks` over HTTP).
pub fn task_frame_json(view: &TaskView) -> String {
    let task = serde_json::to_string(view).unwrap_or_default();
    format!(r#"{{"op":"task","task":{task}}}"#)
}

/// The answer to a task op: `{"op":"task_ack","id":…,"task_id":…,"state":…,…}`.
pub fn task_ack_json(
    request: Option<&str>,
    task_id: Option<&Uuid>,
    fields: serde_json::Value,
) -> String {
    let mut frame = match fields {
        serde_json::Value::Object(map) => serde_json::Value::Object(map),
        _ => serde_json::json!({}),
    };
    // The answer's own fields never take the place of the envelope's: `id` is the request's.
    if let Some(map) = frame.as_object_mut() {
        map.remove("id");
    }
    frame["op"] = "task_ack".into();
    if let Some(request) = request {
        frame["id"] = request.into();
    }
    if let Some(task_id) = task_id {
        frame["task_id"] = task_id.to_string().into();
    }
    frame.to_string()
}

/// The state fields of a task op's answer.
pub fn status_fields(status: &TaskStatus) -> serde_json::Value {
    let mut fields = serde_json::json!({
        "state": status.state,
        "version": status.version,
        "attempt": status.attempt,
    });
    if let Some(at) = status.not_before_ms {
        fields["not_before_ms"] = at.into();
    }
    if let Some(reason) = &status.dead_reason {
        fields["dead_reason"] = reason.as_str().into();
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ops_decode_and_name_their_errors() {
        let op = TaskOp::from_json(
            r#"{"op":"consume","id":"c1","capabilities":["search"],"prefetch":8}"#,
        )
        .expect("consume");
        let TaskOp::Consume { claim, id, .. } = op else {
            panic!("not a consume");
        };
        assert_eq!(
            (claim.max, claim.lease_ms, id.as_deref()),
            (8, DEFAULT_LEASE_MS, Some("c1"))
        );
        let (id, err) = TaskOp::from_json(r#"{"op":"complete","id":"r9","lease_id":"l"}"#)
            .expect_err("no task id");
        assert_eq!((id.as_deref(), err.field()), (Some("r9"), Some("task_id")));
        let (_, err) =
            TaskOp::from_json(r#"{"op":"consume","capabilities":["x"],"prefetch":100000}"#)
                .expect_err("prefetch");
        assert_eq!(err.field(), Some("prefetch"));
        let (_, err) = TaskOp::from_json(r#"{"op":"fail","task_id":"0190b6f2-8a1e-7cc0-9b8e-4b0a8f8f8f8f","lease_id":"l","error":""}"#)
            .expect_err("error text");
        assert_eq!(err.field(), Some("error"));
        assert!(TaskOp::is_task_op("heartbeat"));
        assert!(!TaskOp::is_task_op("publish"));
    }

    #[test]
    fn acks_carry_the_request_id_and_the_state() {
        let id = Uuid::now_v7();
        let json = task_ack_json(
            Some("r1"),
            Some(&id),
            serde_json::json!({"state": "ready", "id": "the task's own id"}),
        );
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["op"], "task_ack");
        assert_eq!(value["id"], "r1");
        assert_eq!(value["task_id"], id.to_string());
        assert_eq!(value["state"], "ready");
    }
}
