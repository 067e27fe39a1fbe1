//! Work-queue tasks: what a client enqueues ([`TaskSpec`]), what a task is for its whole life
//! ([`TaskDoc`], never changed after enqueue), where it stands ([`TaskStatus`], changed by every
//! transition) and the log record of each transition ([`TaskRecord`], topic `agent.tasks`).
//!
//! The states and transitions (documented in `docs/tasks.md`):
//!
//! ```text
//! enqueued ─► ready ◄──────── delayed ◄── retry_scheduled (fail, retryable, attempts left)
//!  (or delayed)│  ▲  released /    ▲
//!              │  │  lease_expired │ (not_before passed: ready, no record)
//!              ▼  │                │
//!            claimed ─────────────►┘
//!              ├─► completed                     (terminal)
//!              └─► dead_lettered ─► requeued (ready) or purged (terminal)
//! any non-terminal state ─► cancelled            (terminal)
//! ```
//!
//! Every record carries the task's whole [`TaskStatus`] with a per-task `version` that grows by
//! one at each transition, so the state of a task is the status of its highest version,
//! whatever order two gateways' records reached the log in.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{Capability, SessionKey, Tenant};

/// Record type prefix of every task transition on the log.
pub const TASK_EVENT_PREFIX: &str = "agent.task.";
/// The CloudEvents `source` of task records.
pub const TASK_SOURCE: &str = "agentwire/tasks";
/// Highest priority; 0 is the lowest, and the default.
pub const MAX_PRIORITY: u8 = 9;
/// Attempts a task gets unless it says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest idempotency key, correlation or causation id, error text and worker name, in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// Largest payload (JSON text or base64 text), in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;
/// Longest delay a task may ask for: 30 days.
pub const MAX_DELAY_MS: u64 = 30 * 24 * 3600 * 1000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker.
    Ready,
    /// Waiting for `not_before` (a delayed task or a scheduled retry).
    Delayed,
    /// Held by a worker's lease until `lease_expires_at_ms`.
    Claimed,
    /// Done; the result is kept. Terminal.
    Completed,
    /// Failed for good (attempts used up, a non-retryable failure, or its deadline passed):
    /// waits in the dead letters to be inspected, re-queued or purged.
    Dead,
    /// Cancelled by a client, or purged from the dead letters. Terminal.
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Ready => "ready",
            TaskState::Delayed => "delayed",
            TaskState::Claimed => "claimed",
            TaskState::Completed => "completed",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ready" => TaskState::Ready,
            "delayed" => TaskState::Delayed,
            "claimed" => TaskState::Claimed,
            "completed" => TaskState::Completed,
            "dead" => TaskState::Dead,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }

    /// Completed or cancelled: nothing will happen to the task again.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Cancelled)
    }
}

/// What happened to a task: the suffix of its record's type (`agent.task.<kind>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskEventKind {
    Enqueued,
    Claimed,
    /// A lease ran out: the task is ready again (a redelivery).
    LeaseExpired,
    /// The worker gave the task back; the attempt is not charged.
    Released,
    /// A retryable failure with attempts left: ready again at `not_before_ms`.
    RetryScheduled,
    DeadLettered,
    Completed,
    Cancelled,
    /// A dead letter put back in its queue with fresh attempts.
    Requeued,
    /// A dead letter removed for good.
    Purged,
}

impl TaskEventKind {
    pub const ALL: [TaskEventKind; 10] = [
        TaskEventKind::Enqueued,
        TaskEventKind::Claimed,
        TaskEventKind::LeaseExpired,
        TaskEventKind::Released,
        TaskEventKind::RetryScheduled,
        TaskEventKind::DeadLettered,
        TaskEventKind::Completed,
        TaskEventKind::Cancelled,
        TaskEventKind::Requeued,
        TaskEventKind::Purged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskEventKind::Enqueued => "enqueued",
            TaskEventKind::Claimed => "claimed",
            TaskEventKind::LeaseExpired => "lease_expired",
            TaskEventKind::Released => "released",
            TaskEventKind::RetryScheduled => "retry_scheduled",
            TaskEventKind::DeadLettered => "dead_lettered",
            TaskEventKind::Completed => "completed",
            TaskEventKind::Cancelled => "cancelled",
            TaskEventKind::Requeued => "requeued",
            TaskEventKind::Purged => "purged",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The record's CloudEvents type, e.g. `agent.task.claimed`.
    pub fn event_type(self) -> String {
        format!("{TASK_EVENT_PREFIX}{}", self.as_str())
    }
}

/// Exponential backoff with jitter between a failure and the retry.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The delay after the first failure.
    #[serde(default = "RetryPolicy::default_initial")]
    pub initial_ms: u64,
    /// The longest delay.
    #[serde(default = "RetryPolicy::default_max")]
    pub max_ms: u64,
    /// Each retry waits this many times longer than the previous one.
    #[serde(default = "RetryPolicy::default_multiplier")]
    pub multiplier: f64,
    /// The delay is drawn from `[d·(1−jitter), d]`, so retries of many tasks spread out.
    #[serde(default = "RetryPolicy::default_jitter")]
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_ms: Self::default_initial(),
            max_ms: Self::default_max(),
            multiplier: Self::default_multiplier(),
            jitter: Self::default_jitter(),
        }
    }
}

impl RetryPolicy {
    fn default_initial() -> u64 {
        1_000
    }
    fn default_max() -> u64 {
        60_000
    }
    fn default_multiplier() -> f64 {
        2.0
    }
    fn default_jitter() -> f64 {
        0.2
    }

    /// Checks the bounds: `initial_ms` 1 ms to 1 h, `max_ms` from `initial_ms` to 24 h,
    /// `multiplier` 1 to 10, `jitter` 0 to 1.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if !(1..=3_600_000).contains(&self.initial_ms) {
            return Err(ProtocolError::invalid(
                "retry.initial_ms",
                "must be 1 to 3600000",
            ));
        }
        if !(self.initial_ms..=86_400_000).contains(&self.max_ms) {
            return Err(ProtocolError::invalid(
                "retry.max_ms",
                "must be from initial_ms to 86400000",
            ));
        }
        if !(1.0..=10.0).contains(&self.multiplier) {
            return Err(ProtocolError::invalid(
                "retry.multiplier",
                "must be 1 to 10",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ProtocolError::invalid("retry.jitter", "must be 0 to 1"));
        }
        Ok(())
    }

    /// The delay before the retry that follows failed attempt `attempt` (1-based), given a
    /// uniform draw `unit` in `[0, 1)`: `min(max, initial·multiplier^(attempt−1))`, less up
    /// to `jitter` of it.
    pub fn backoff_ms(&self, attempt: u32, unit: f64) -> u64 {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        #[allow(clippy::cast_precision_loss)]
        let full =
            (self.initial_ms as f64 * self.multiplier.powi(exponent)).min(self.max_ms as f64);
        let unit = unit.clamp(0.0, 1.0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let delay = (full * (1.0 - self.jitter * unit)).round() as u64;
        delay.max(1)
    }
}

/// A task as a client enqueues it (`POST /v1/tasks`, WebSocket `enqueue`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub tenant: String,
    pub capability: String,
    #[serde(default)]
    pub priority: Option<u8>,
    /// JSON payload (with `content_type` absent or a JSON type).
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// Binary payload, base64; needs a non-JSON `content_type`.
    #[serde(default)]
    pub payload_base64: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Ready no earlier than this many milliseconds from now.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Ready no earlier than this time (milliseconds since the Unix epoch).
    #[serde(default)]
    pub not_before_ms: Option<u64>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// After this time (milliseconds since the Unix epoch) the task is not handed out: it is
    /// dead-lettered with reason `deadline`.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub causation_id: Option<String>,
    /// The agent session the task belongs to (`tenant:agent_type:session_id`).
    #[serde(default)]
    pub session: Option<String>,
    /// The session that receives the outcome as an `agent.task.result` event.
    #[serde(default)]
    pub reply_to: Option<String>,
}

/// The immutable part of a task, stored with it and in its `enqueued` record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskDoc {
    pub id: Uuid,
    pub tenant: Tenant,
    pub capability: Capability,
    pub priority: u8,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub max_attempts: u32,
    pub retry: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<SessionKey>,
    pub enqueued_at_ms: u64,
    /// When it first becomes ready (absent: at once). `ready_at_ms` on the wire, so a
    /// [`TaskView`] (document and status side by side) has one `not_before_ms`: the status's.
    #[serde(
        default,
        rename = "ready_at_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_before_ms: Option<u64>,
}

fn text(field: &'static str, value: Option<String>) -> Result<Option<String>, ProtocolError> {
    match value {
        Some(v) if v.is_empty() || v.len() > MAX_TEXT_LEN => Err(ProtocolError::invalid(
            field,
            format!("must be 1 to {MAX_TEXT_LEN} bytes"),
        )),
        other => Ok(other),
    }
}

fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

impl TaskDoc {
    /// Validates a client's spec and makes the task, with a new UUIDv7 id, enqueued at `now_ms`.
    pub fn from_spec(spec: TaskSpec, now_ms: u64) -> Result<Self, ProtocolError> {
        let tenant = Tenant::new(spec.tenant)?;
        let capability = Capability::new(spec.capability)?;
        let priority = spec.priority.unwrap_or(0);
        if priority > MAX_PRIORITY {
            return Err(ProtocolError::invalid(
                "priority",
                format!("must be 0 to {MAX_PRIORITY}"),
            ));
        }
        let content_type = spec
            .content_type
            .unwrap_or_else(|| "application/json".to_owned());
        if content_type.is_empty() || content_type.len() > 256 {
            return Err(ProtocolError::invalid(
                "content_type",
                "must be 1 to 256 bytes",
            ));
        }
        let size = spec.payload.as_ref().map_or(0, |p| p.get().len())
            + spec.payload_base64.as_ref().map_or(0, String::len);
        if size > MAX_PAYLOAD_BYTES {
            return Err(ProtocolError::new(
                ErrorCode::PayloadTooLarge,
                format!("the payload is {size} bytes; at most {MAX_PAYLOAD_BYTES}"),
            )
            .with_field("payload"));
        }
        let (payload, payload_base64) = match (spec.payload, spec.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(ProtocolError::invalid(
                    "payload",
                    "and payload_base64 exclude each other",
                ));
            }
            (Some(json), None) => {
                if !is_json_type(&content_type) {
                    return Err(ProtocolError::invalid(
                        "payload",
                        format!(
                            "is JSON but content_type is {content_type:?}; send payload_base64"
                        ),
                    ));
                }
                (Some(json), None)
            }
            (None, Some(_)) if is_json_type(&content_type) => {
                return Err(ProtocolError::invalid(
                    "content_type",
                    "must name the binary payload's type (not JSON) with payload_base64",
                ));
            }
            (None, Some(b64)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(&b64)
                    .map_err(|e| {
                        ProtocolError::invalid("payload_base64", format!("is not base64: {e}"))
                    })?;
                (None, Some(b64))
            }
            (None, None) => (None, None),
        };
        let max_attempts = spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(ProtocolError::invalid(
                "max_attempts",
                format!("must be 1 to {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        let retry = spec.retry.unwrap_or_default();
        retry.validate()?;
        let not_before_ms = match (spec.delay_ms, spec.not_before_ms) {
            (Some(_), Some(_)) => {
                return Err(ProtocolError::invalid(
                    "delay_ms",
                    "and not_before_ms exclude each other",
                ));
            }
            (Some(delay), None) if delay > MAX_DELAY_MS => {
                return Err(ProtocolError::invalid(
                    "delay_ms",
                    format!("must be at most {MAX_DELAY_MS}"),
                ));
            }
            (Some(0), None) => None,
            (Some(delay), None) => Some(now_ms + delay),
            (None, Some(at)) if at > now_ms + MAX_DELAY_MS => {
                return Err(ProtocolError::invalid(
                    "not_before_ms",
                    "is more than 30 days ahead",
                ));
            }
            (None, Some(at)) => (at > now_ms).then_some(at),
            (None, None) => None,
        };
        let session_key = |field: &'static str, value: Option<String>| {
            value
                .map(|s| {
                    let key: SessionKey =
                        s.parse().map_err(|e: ProtocolError| e.with_field(field))?;
                    if key.tenant != tenant {
                        return Err(ProtocolError::invalid(
                            field,
                            "must be a session of the task's tenant",
                        ));
                    }
                    Ok(key)
                })
                .transpose()
        };
        Ok(Self {
            id: Uuid::now_v7(),
            session: session_key("session", spec.session)?,
            reply_to: session_key("reply_to", spec.reply_to)?,
            tenant,
            capability,
            priority,
            content_type,
            payload,
            payload_base64,
            idempotency_key: text("idempotency_key", spec.idempotency_key)?,
            max_attempts,
            retry,
            deadline_ms: spec.deadline_ms,
            correlation_id: text("correlation_id", spec.correlation_id)?,
            causation_id: text("causation_id", spec.causation_id)?,
            enqueued_at_ms: now_ms,
            not_before_ms,
        })
    }
}

/// Where a task stands after a transition: the whole of it, so the newest version alone
/// says everything.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// Grows by one at every transition.
    pub version: u64,
    /// Attempts charged so far (claims that did not end in a release).
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Who holds (or last held) the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why it is dead: `attempts`, `not_retryable`, `deadline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
    /// The worker's result (JSON), once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    pub updated_at_ms: u64,
}

impl PartialEq for TaskStatus {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
            && self.version == other.version
            && self.attempt == other.attempt
            && self.lease_id == other.lease_id
            && self.lease_expires_at_ms == other.lease_expires_at_ms
            && self.not_before_ms == other.not_before_ms
            && self.worker == other.worker
            && self.last_error == other.last_error
            && self.dead_reason == other.dead_reason
            && self.result.as_ref().map(|r| r.get()) == other.result.as_ref().map(|r| r.get())
            && self.updated_at_ms == other.updated_at_ms
    }
}

/// A task as clients see it: what it is and where it stands.
#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub doc: TaskDoc,
    #[serde(flatten)]
    pub status: TaskStatus,
}

/// A transition as written to the log: a CloudEvents JSON record of type
/// `agent.task.<kind>`, subject the task id, data `{"status":…}` plus, in `enqueued`
/// records, `"task":…` (the [`TaskDoc`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRecord {
    pub kind: TaskEventKind,
    pub tenant: Tenant,
    pub id: Uuid,
    pub doc: Option<TaskDoc>,
    pub status: TaskStatus,
}

#[derive(Serialize, Deserialize)]
struct RecordData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<TaskDoc>,
    status: TaskStatus,
}

#[derive(Serialize, Deserialize)]
struct RecordEnvelope {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    subject: String,
    time: String,
    datacontenttype: String,
    tenant: String,
    data: RecordData,
}

fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let nanos = i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0);
    prost_types::Timestamp {
        seconds: secs,
        nanos,
    }
    .to_string()
}

impl TaskRecord {
    /// The record's CloudEvents JSON.
    pub fn to_json(&self) -> String {
        let envelope = RecordEnvelope {
            specversion: "1.0".into(),
            id: Uuid::now_v7().to_string(),
            source: TASK_SOURCE.into(),
            event_type: self.kind.event_type(),
            subject: self.id.to_string(),
            time: rfc3339(self.status.updated_at_ms),
            datacontenttype: "application/json".into(),
            tenant: self.tenant.to_string(),
            data: RecordData {
                task: self.doc.clone(),
                status: self.status.clone(),
            },
        };
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// Reads a record of `agent.tasks`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let envelope: RecordEnvelope = serde_json::from_slice(bytes)
            .map_err(|e| ProtocolError::malformed(format!("not a task record: {e}")))?;
        let kind = envelope
            .event_type
            .strip_prefix(TASK_EVENT_PREFIX)
            .and_then(TaskEventKind::parse)
            .ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::InvalidField,
                    format!("{:?} is not a task record type", envelope.event_type),
                )
            })?;
        let id = Uuid::parse_str(&envelope.subject)
            .map_err(|e| ProtocolError::invalid("subject", format!("is not a task id: {e}")))?;
        Ok(Self {
            kind,
            tenant: Tenant::new(envelope.tenant)?,
            id,
            doc: envelope.data.task,
            status: envelope.data.status,
        })
    }

    /// The record key: `tenant:tasks`. Every transition of a tenant's tasks goes to one
    /// partition, in one order (so one task keeps one order), and transitions made at once
    /// can share one record ([`TaskRecord::batch_json`]).
    pub fn key(&self) -> String {
        tenant_key(&self.tenant)
    }

    /// One log record holding several transitions of one tenant, in order: type
    /// [`TASK_BATCH_TYPE`], subject the tenant, data `{"records":[{"kind","id","task"?,
    /// "status"},…]}`. A single transition is written in its own form ([`Self::to_json`]).
    /// Group commit: a gateway appends the transitions made while its earlier appends were in
    /// flight as one record, so the broker stores one record where it would store many.
    pub fn batch_json(records: &[TaskRecord]) -> String {
        if let [one] = records {
            return one.to_json();
        }
        let (tenant, time) = records.first().map_or((String::new(), 0), |r| {
            (r.tenant.to_string(), r.status.updated_at_ms)
        });
        let items: Vec<BatchItem> = records
            .iter()
            .map(|r| BatchItem {
                kind: r.kind,
                id: r.id,
                task: r.doc.clone(),
                status: r.status.clone(),
            })
            .collect();
        let envelope = BatchEnvelope {
            specversion: "1.0".into(),
            id: Uuid::now_v7().to_string(),
            source: TASK_SOURCE.into(),
            event_type: TASK_BATCH_TYPE.into(),
            subject: tenant.clone(),
            time: rfc3339(time),
            datacontenttype: "application/json".into(),
            tenant,
            data: BatchData { records: items },
        };
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// Reads a record of `agent.tasks`: one transition, or a batch of them.
    pub fn parse_all(bytes: &[u8]) -> Result<Vec<Self>, ProtocolError> {
        #[derive(Deserialize)]
        struct Type {
            #[serde(rename = "type")]
            event_type: String,
        }
        let kind: Type = serde_json::from_slice(bytes)
            .map_err(|e| ProtocolError::malformed(format!("not a task record: {e}")))?;
        if kind.event_type != TASK_BATCH_TYPE {
            return Ok(vec![Self::from_json(bytes)?]);
        }
        let envelope: BatchEnvelope = serde_json::from_slice(bytes)
            .map_err(|e| ProtocolError::malformed(format!("not a task batch: {e}")))?;
        let tenant = Tenant::new(envelope.tenant)?;
        Ok(envelope
            .data
            .records
            .into_iter()
            .map(|item| Self {
                kind: item.kind,
                tenant: tenant.clone(),
                id: item.id,
                doc: item.task,
                status: item.status,
            })
            .collect())
    }
}

/// The CloudEvents type of a record holding several transitions ([`TaskRecord::batch_json`]).
pub const TASK_BATCH_TYPE: &str = "agent.task.transitions";

/// The record key of a tenant's task transitions.
pub fn tenant_key(tenant: &Tenant) -> String {
    format!("{tenant}:tasks")
}

#[derive(Serialize, Deserialize)]
struct BatchItem {
    kind: TaskEventKind,
    id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<TaskDoc>,
    status: TaskStatus,
}

#[derive(Serialize, Deserialize)]
struct BatchData {
    records: Vec<BatchItem>,
}

#[derive(Serialize, Deserialize)]
struct BatchEnvelope {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    subject: String,
    time: String,
    datacontenttype: String,
    tenant: String,
    data: BatchData,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> TaskSpec {
        serde_json::from_str(json).expect("spec")
    }

    #[test]
    fn a_spec_becomes_a_task_with_defaults() {
        let doc = TaskDoc::from_spec(
            spec(r#"{"tenant":"acme","capability":"web_search","payload":{"q":"rust"}}"#),
            1_000,
        )
        .expect("valid");
        assert_eq!(doc.priority, 0);
        assert_eq!(doc.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(
            doc.payload.as_ref().map(|p| p.get()),
            Some(r#"{"q":"rust"}"#)
        );
        assert_eq!(doc.not_before_ms, None);
        assert_eq!(doc.id.get_version_num(), 7);
    }

    #[test]
    fn bad_specs_name_their_field() {
        for (json, field) in [
            (
                r#"{"tenant":"acme","capability":"x","priority":10}"#,
                "priority",
            ),
            (r#"{"tenant":"acme","capability":"a b"}"#, "capability"),
            (
                r#"{"tenant":"acme","capability":"x","max_attempts":0}"#,
                "max_attempts",
            ),
            (
                r#"{"tenant":"acme","capability":"x","retry":{"jitter":2}}"#,
                "retry.jitter",
            ),
            (
                r#"{"tenant":"acme","capability":"x","payload":1,"payload_base64":"AA=="}"#,
                "payload",
            ),
            (
                r#"{"tenant":"acme","capability":"x","payload_base64":"!!","content_type":"image/png"}"#,
                "payload_base64",
            ),
            (
                r#"{"tenant":"acme","capability":"x","payload_base64":"AA=="}"#,
                "content_type",
            ),
            (
                r#"{"tenant":"acme","capability":"x","reply_to":"other:a:s"}"#,
                "reply_to",
            ),
            (
                r#"{"tenant":"acme","capability":"x","delay_ms":1,"not_before_ms":5}"#,
                "delay_ms",
            ),
        ] {
            let err = TaskDoc::from_spec(spec(json), 1_000).expect_err(json);
            assert_eq!(err.field(), Some(field), "{json}: {err}");
        }
    }

    #[test]
    fn a_delay_sets_not_before() {
        let doc = TaskDoc::from_spec(
            spec(r#"{"tenant":"acme","capability":"x","delay_ms":500}"#),
            1_000,
        )
        .expect("valid");
        assert_eq!(doc.not_before_ms, Some(1_500));
    }

    #[test]
    fn backoff_grows_is_bounded_and_jittered_downwards() {
        let policy = RetryPolicy {
            initial_ms: 100,
            max_ms: 1_000,
            multiplier: 2.0,
            jitter: 0.5,
        };
        assert_eq!(policy.backoff_ms(1, 0.0), 100);
        assert_eq!(policy.backoff_ms(2, 0.0), 200);
        assert_eq!(policy.backoff_ms(3, 0.0), 400);
        assert_eq!(policy.backoff_ms(10, 0.0), 1_000);
        assert_eq!(policy.backoff_ms(1, 1.0), 50);
        assert!(policy.backoff_ms(40, 0.999) >= 500);
    }

    #[test]
    fn records_round_trip_and_name_their_kind() {
        let doc = TaskDoc::from_spec(
            spec(r#"{"tenant":"acme","capability":"x","payload":{"n":1}}"#),
            1_000,
        )
        .expect("valid");
        let record = TaskRecord {
            kind: TaskEventKind::Enqueued,
            tenant: doc.tenant.clone(),
            id: doc.id,
            doc: Some(doc.clone()),
            status: TaskStatus {
                state: TaskState::Ready,
                version: 1,
                attempt: 0,
                lease_id: None,
                lease_expires_at_ms: None,
                not_before_ms: None,
                worker: None,
                last_error: None,
                dead_reason: None,
                result: None,
                updated_at_ms: 1_000,
            },
        };
        let json = record.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["type"], "agent.task.enqueued");
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["subject"], doc.id.to_string());
        let back = TaskRecord::from_json(json.as_bytes()).expect("parse");
        assert_eq!(back.kind, TaskEventKind::Enqueued);
        assert_eq!(back.status, record.status);
        assert_eq!(back.doc.map(|d| d.id), Some(doc.id));
        let mut claimed = record.clone();
        claimed.kind = TaskEventKind::Claimed;
        claimed.doc = None;
        claimed.status.version = 2;
        let batch = TaskRecord::batch_json(&[record.clone(), claimed]);
        let all = TaskRecord::parse_all(batch.as_bytes()).expect("batch");
        assert_eq!(
            all.iter()
                .map(|r| (r.kind, r.status.version))
                .collect::<Vec<_>>(),
            vec![(TaskEventKind::Enqueued, 1), (TaskEventKind::Claimed, 2)]
        );
        assert!(all[0].doc.is_some() && all[1].doc.is_none());
        assert_eq!(
            TaskRecord::parse_all(json.as_bytes())
                .expect("single")
                .len(),
            1
        );
        let view = serde_json::to_value(TaskView {
            doc,
            status: record.status,
        })
        .expect("view");
        assert_eq!(view["state"], "ready");
        assert_eq!(view["payload"]["n"], 1);
    }
}
