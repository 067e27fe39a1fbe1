//! The worker's wire work, with no I/O: the JSON ops it sends (`consume`, `heartbeat`,
//! `complete`, `fail`, `release`, `stop_consuming`), the frames it reads (`task`, `task_ack`,
//! `error`, …), the heartbeat interval and the reconnection backoff.

use std::time::Duration;

use agentwire_protocol::{AgentId, Capability, ErrorCode, ErrorFrame, ServerFrame, Tenant};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ClientError;
use crate::task_types::{Task, error_text};

/// How a task's lease ends.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Settle {
    Complete(Option<Value>),
    Fail { error: String, retryable: bool },
    Release,
}

/// What a worker reads from the server.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A pushed task, leased to this worker.
    Task(Box<Task>),
    /// A `task` frame that did not parse, with what could be read of it (to release it).
    BadTask {
        task_id: Option<String>,
        lease_id: Option<String>,
        reason: String,
    },
    /// `task_ack`: the answer to the op with request `id`.
    Ack {
        id: Option<String>,
        fields: Value,
    },
    Error(ErrorFrame),
    Pong,
    Refreshed,
    /// A frame a worker has no use for, by its `op`.
    Other(String),
}

#[derive(Deserialize)]
struct Head {
    op: String,
}

/// Reads one text frame.
pub(crate) fn parse(text: &str) -> Result<Incoming, ClientError> {
    let head: Head = serde_json::from_str(text)?;
    Ok(match head.op.as_str() {
        "task" => {
            let mut frame: Value = serde_json::from_str(text)?;
            let body = frame.get_mut("task").map(Value::take).unwrap_or_default();
            let read = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
            let (task_id, lease_id) = (read("id"), read("lease_id"));
            match serde_json::from_value::<Task>(body) {
                Ok(task) if task.lease_id.is_some() => Incoming::Task(Box::new(task)),
                Ok(_) => Incoming::BadTask {
                    task_id,
                    lease_id,
                    reason: "it has no lease_id".to_owned(),
                },
                Err(err) => Incoming::BadTask {
                    task_id,
                    lease_id,
                    reason: err.to_string(),
                },
            }
        }
        "task_ack" | "registered" => {
            let fields: Value = serde_json::from_str(text)?;
            let id = fields.get("id").and_then(Value::as_str).map(str::to_owned);
            Incoming::Ack { id, fields }
        }
        "error" => match ServerFrame::from_json(text)? {
            ServerFrame::Error(frame) => Incoming::Error(frame),
            other => Incoming::Other(format!("{other:?}")),
        },
        "pong" => Incoming::Pong,
        "refreshed" => Incoming::Refreshed,
        _ => Incoming::Other(head.op),
    })
}

/// `register`: the worker as agent `agent_id` serving `capabilities`, at most `prefetch` at
/// once.
pub(crate) fn register(
    id: &str,
    tenant: &Tenant,
    agent_id: &AgentId,
    capabilities: &[Capability],
    prefetch: usize,
) -> String {
    json!({
        "op": "register",
        "id": id,
        "tenant": tenant,
        "agent_id": agent_id,
        "capabilities": capabilities,
        "max_concurrency": prefetch,
    })
    .to_string()
}

/// `consume`: push tasks of `capabilities`, at most `prefetch` unsettled, each leased for
/// `lease_ms`.
pub(crate) fn consume(
    id: &str,
    tenant: &Tenant,
    capabilities: &[Capability],
    prefetch: usize,
    lease_ms: u64,
    worker: Option<&str>,
) -> String {
    let mut op = json!({
        "op": "consume",
        "id": id,
        "tenant": tenant,
        "capabilities": capabilities,
        "prefetch": prefetch,
        "lease_ms": lease_ms,
    });
    if let Some(worker) = worker {
        op["worker"] = worker.into();
    }
    op.to_string()
}

/// `stop_consuming`.
pub(crate) fn stop_consuming(id: &str) -> String {
    json!({"op": "stop_consuming", "id": id}).to_string()
}

/// `heartbeat`: extends the lease by `lease_ms` from now.
pub(crate) fn heartbeat(
    id: &str,
    tenant: &Tenant,
    task_id: &str,
    lease_id: &str,
    lease_ms: u64,
) -> String {
    json!({
        "op": "heartbeat",
        "id": id,
        "tenant": tenant,
        "task_id": task_id,
        "lease_id": lease_id,
        "lease_ms": lease_ms,
    })
    .to_string()
}

/// `complete`, `fail` or `release`.
pub(crate) fn settle(
    id: &str,
    tenant: &Tenant,
    task_id: &str,
    lease_id: &str,
    how: &Settle,
) -> String {
    let mut op = json!({
        "id": id,
        "tenant": tenant,
        "task_id": task_id,
        "lease_id": lease_id,
    });
    match how {
        Settle::Complete(result) => {
            op["op"] = "complete".into();
            if let Some(result) = result.as_ref().filter(|r| !r.is_null()) {
                op["result"] = result.clone();
            }
        }
        Settle::Fail { error, retryable } => {
            op["op"] = "fail".into();
            op["error"] = error_text(error).into();
            op["retryable"] = (*retryable).into();
        }
        Settle::Release => op["op"] = "release".into(),
    }
    op.to_string()
}

/// How often a running task's lease is extended: a third of the lease, so two heartbeats
/// can be lost before it expires.
pub(crate) fn heartbeat_interval(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// Whether a refusal may go away by itself (retry the op later) rather than never.
pub(crate) fn is_transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable
            | ErrorCode::OutcomeUnknown
            | ErrorCode::RateLimited
            | ErrorCode::Internal
            | ErrorCode::RequestTimeout
    )
}

/// Jittered exponential delays between reconnection attempts, each from `min` to `max`;
/// [`Backoff::reset`] after a connection that worked.
#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        let builder = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(min)
            .with_max_delay(max)
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    pub(crate) fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use agentwire_protocol::TaskOp;

    use super::*;

    const TASK_ID: &str = "0190b6f2-8a1e-7cc0-9b8e-4b0a8f8f8f8f";

    fn tenant() -> Tenant {
        Tenant::new("acme").expect("valid")
    }

    #[test]
    fn every_op_is_one_the_server_decodes() {
        let caps = [Capability::new("search").expect("valid")];
        let op = TaskOp::from_json(&consume("r1", &tenant(), &caps, 8, 9_000, Some("w")))
            .expect("consume");
        let TaskOp::Consume {
            id,
            tenant: t,
            claim,
        } = op
        else {
            panic!("not a consume: {op:?}");
        };
        assert_eq!(
            (id.as_deref(), claim.max, claim.lease_ms),
            (Some("r1"), 8, 9_000)
        );
        assert_eq!((t, claim.worker.as_str()), (Some(tenant()), "w"));

        let agent = AgentId::new("worker-1").expect("valid");
        let op =
            agentwire_protocol::CoordOp::from_json(&register("r0", &tenant(), &agent, &caps, 8))
                .expect("register");
        let agentwire_protocol::CoordOp::Register { id, spec } = op else {
            panic!("not a register: {op:?}");
        };
        assert_eq!(
            (id.as_deref(), spec.agent_id.as_str(), spec.max_concurrency),
            (Some("r0"), "worker-1", Some(8))
        );
        assert_eq!(
            (spec.tenant, spec.capabilities),
            (Some(tenant()), caps.to_vec())
        );

        let op =
            TaskOp::from_json(&heartbeat("r2", &tenant(), TASK_ID, "L", 600)).expect("heartbeat");
        assert!(
            matches!(op, TaskOp::Heartbeat { lease_ms: 600, ref lease_id, .. } if lease_id == "L")
        );

        let done = Settle::Complete(Some(json!({"n": 1})));
        let op =
            TaskOp::from_json(&settle("r3", &tenant(), TASK_ID, "L", &done)).expect("complete");
        let TaskOp::Complete { result, .. } = op else {
            panic!("not a complete: {op:?}");
        };
        assert_eq!(
            result.map(|r| r.get().to_owned()),
            Some(r#"{"n":1}"#.into())
        );
        let bare = settle(
            "r3",
            &tenant(),
            TASK_ID,
            "L",
            &Settle::Complete(Some(Value::Null)),
        );
        assert!(!bare.contains("result"), "{bare}");

        let failed = Settle::Fail {
            error: String::new(),
            retryable: false,
        };
        let op = TaskOp::from_json(&settle("r4", &tenant(), TASK_ID, "L", &failed)).expect("fail");
        assert!(
            matches!(op, TaskOp::Fail { retryable: false, ref error, .. } if error == "failed")
        );

        let op = TaskOp::from_json(&settle("r5", &tenant(), TASK_ID, "L", &Settle::Release))
            .expect("release");
        assert!(matches!(op, TaskOp::Release { .. }));
        let op = TaskOp::from_json(&stop_consuming("r6")).expect("stop");
        assert_eq!(op.id(), Some("r6"));
    }

    #[test]
    fn server_frames_are_read() {
        let text = format!(
            r#"{{"op":"task","task":{{"id":"{TASK_ID}","tenant":"acme","capability":"search","state":"claimed","attempt":1,"max_attempts":5,"lease_id":"L","payload":{{"q":1}}}}}}"#
        );
        let Incoming::Task(task) = parse(&text).expect("task") else {
            panic!("not a task");
        };
        assert_eq!((task.lease_id.as_deref(), task.attempt), (Some("L"), 1));

        let bad = format!(r#"{{"op":"task","task":{{"id":"{TASK_ID}","lease_id":"L"}}}}"#);
        let Incoming::BadTask {
            task_id, lease_id, ..
        } = parse(&bad).expect("frame")
        else {
            panic!("not a bad task");
        };
        assert_eq!(
            (task_id.as_deref(), lease_id.as_deref()),
            (Some(TASK_ID), Some("L"))
        );

        let Incoming::Ack { id, fields } =
            parse(r#"{"op":"task_ack","id":"r1","task_id":"t","lease_expires_at_ms":5}"#)
                .expect("ack")
        else {
            panic!("not an ack");
        };
        assert_eq!(
            (id.as_deref(), fields["lease_expires_at_ms"].as_u64()),
            (Some("r1"), Some(5))
        );

        let Incoming::Error(err) =
            parse(r#"{"op":"error","code":"stale_lease","message":"gone","id":"r2"}"#)
                .expect("error")
        else {
            panic!("not an error");
        };
        assert_eq!(
            (err.code, err.id.as_deref()),
            (ErrorCode::StaleLease, Some("r2"))
        );
        assert!(matches!(parse(r#"{"op":"pong"}"#), Ok(Incoming::Pong)));
        assert!(
            matches!(parse(r#"{"op":"later","x":1}"#), Ok(Incoming::Other(op)) if op == "later")
        );
        assert!(parse("not json").is_err());
    }

    #[test]
    fn heartbeats_come_three_times_per_lease() {
        assert_eq!(
            heartbeat_interval(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_millis(2)),
            Duration::from_millis(1)
        );
        assert!(is_transient(ErrorCode::Unavailable));
        assert!(!is_transient(ErrorCode::StaleLease));
    }

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut backoff = Backoff::new(min, max);
        let first = backoff.next_delay();
        assert!(first >= min && first < min * 2, "{first:?}");
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= min && *d <= max), "{delays:?}");
        assert!(
            delays[10..].iter().all(|d| *d >= max / 2),
            "grows to the cap: {delays:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() < min * 2);
        let mut odd = Backoff::new(Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(
            odd.next_delay(),
            Duration::from_secs(3),
            "max is at least min"
        );
    }
}
