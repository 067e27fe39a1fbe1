//! The work queue's JSON as the client writes it ([`NewTask`]) and reads it ([`Task`],
//! [`EnqueueAck`], [`Transition`], [`QueueStats`]). Reading is lenient: fields this client
//! does not know are ignored, so a newer server still works with it.

use std::time::Duration;

use agentwire_protocol::task::MAX_TEXT_LEN;
use agentwire_protocol::{Capability, RetryPolicy, SessionKey, TaskState, Tenant};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Result;
use crate::error::ClientError;

/// A task to enqueue: the JSON of `agentwire_protocol::TaskSpec`. Build it with
/// [`NewTask::new`] and the setters; the server validates it (a refusal names the field).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewTask {
    pub tenant: Tenant,
    pub capability: Capability,
    /// 0 (the default, lowest) to 9.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// A JSON payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// A binary payload, base64 (with a non-JSON `content_type`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Enqueues with the same key (per tenant) make one task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Ready no earlier than this many milliseconds from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Ready no earlier than this time (milliseconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Not handed out after this time (milliseconds since the Unix epoch): dead-lettered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The agent session the task belongs to (of the same tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionKey>,
    /// The session that receives the outcome as an `agent.task.result` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<SessionKey>,
}

impl NewTask {
    /// A task for `capability` in `tenant`, with no payload and the server's defaults.
    pub fn new(tenant: Tenant, capability: Capability) -> Self {
        Self {
            tenant,
            capability,
            priority: None,
            payload: None,
            payload_base64: None,
            content_type: None,
            idempotency_key: None,
            delay_ms: None,
            not_before_ms: None,
            max_attempts: None,
            retry: None,
            deadline_ms: None,
            correlation_id: None,
            causation_id: None,
            session: None,
            reply_to: None,
        }
    }

    /// A JSON payload (replaces a binary one).
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self.payload_base64 = None;
        self
    }

    /// A binary payload of `content_type` (which must not be a JSON type); replaces a JSON one.
    pub fn payload_bytes(mut self, content_type: impl Into<String>, bytes: &[u8]) -> Self {
        self.payload = None;
        self.payload_base64 = Some(STANDARD.encode(bytes));
        self.content_type = Some(content_type.into());
        self
    }

    /// 0 (lowest, the default) to 9.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Ready no earlier than `delay` from now (whole milliseconds).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        self.not_before_ms = None;
        self
    }

    /// Ready no earlier than `at_ms` (milliseconds since the Unix epoch).
    pub fn not_before_ms(mut self, at_ms: u64) -> Self {
        self.not_before_ms = Some(at_ms);
        self.delay_ms = None;
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Dead-lettered instead of handed out after `at_ms` (milliseconds since the Unix epoch).
    pub fn deadline_ms(mut self, at_ms: u64) -> Self {
        self.deadline_ms = Some(at_ms);
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    pub fn session(mut self, session: SessionKey) -> Self {
        self.session = Some(session);
        self
    }

    pub fn reply_to(mut self, session: SessionKey) -> Self {
        self.reply_to = Some(session);
        self
    }
}

/// What an enqueue answered for one task.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct EnqueueAck {
    /// The task id (the earlier task's when `duplicate`).
    pub id: String,
    pub state: TaskState,
    /// The idempotency key named an earlier task: nothing was written.
    #[serde(default)]
    pub duplicate: bool,
    /// Where the `enqueued` record landed in `agent.tasks`.
    #[serde(default)]
    pub partition: Option<i32>,
    #[serde(default)]
    pub offset: Option<u64>,
}

/// A task as the server shows it: what it is and where it stands. A claimed (or pushed) task
/// carries its `lease_id` and `lease_expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Task {
    pub id: String,
    pub tenant: Tenant,
    pub capability: Capability,
    #[serde(default)]
    pub priority: u8,
    #[serde(default)]
    pub content_type: Option<String>,
    /// The JSON payload, when it has one.
    #[serde(default)]
    pub payload: Option<Value>,
    /// The binary payload, base64 (see [`Task::payload_bytes`]).
    #[serde(default)]
    pub payload_base64: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub state: TaskState,
    /// Attempts charged so far, this one included for a claimed task.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub max_attempts: u32,
    /// Grows by one at every transition.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub lease_id: Option<String>,
    #[serde(default)]
    pub lease_expires_at_ms: Option<u64>,
    #[serde(default)]
    pub not_before_ms: Option<u64>,
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Who holds (or last held) the lease.
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Why a dead task is dead: `attempts`, `not_retryable`, `deadline`.
    #[serde(default)]
    pub dead_reason: Option<String>,
    /// The worker's result, once completed.
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub causation_id: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub enqueued_at_ms: u64,
    #[serde(default)]
    pub updated_at_ms: u64,
}

impl Task {
    /// The payload's bytes: the decoded binary payload, or the JSON payload's text; `None`
    /// without a payload.
    pub fn payload_bytes(&self) -> Result<Option<Vec<u8>>> {
        if let Some(b64) = &self.payload_base64 {
            return STANDARD.decode(b64).map(Some).map_err(|e| {
                ClientError::Protocol(format!(
                    "task {} payload_base64 is not base64: {e}",
                    self.id
                ))
            });
        }
        Ok(self.payload.as_ref().map(|p| p.to_string().into_bytes()))
    }

    /// Whether this is the task's last attempt: a retryable failure dead-letters it anyway.
    pub fn is_last_attempt(&self) -> bool {
        self.max_attempts != 0 && self.attempt >= self.max_attempts
    }
}

/// What a complete, fail, release or cancel did to the task.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Transition {
    pub task_id: String,
    /// The task's state now (a retried failure: `delayed`; dead-lettered: `dead`).
    pub state: TaskState,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub attempt: u32,
    /// When a retry becomes ready.
    #[serde(default)]
    pub not_before_ms: Option<u64>,
    #[serde(default)]
    pub dead_reason: Option<String>,
}

/// The sizes of one capability's queue.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct QueueStats {
    pub capability: String,
    #[serde(default)]
    pub ready: u64,
    #[serde(default)]
    pub delayed: u64,
    /// Claimed and not yet settled.
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub dead: u64,
    /// How long the oldest ready task has waited (`None`: none ready).
    #[serde(default)]
    pub oldest_ready_age_ms: Option<u64>,
}

impl QueueStats {
    pub(crate) fn empty(capability: &str) -> Self {
        Self {
            capability: capability.to_owned(),
            ready: 0,
            delayed: 0,
            in_flight: 0,
            dead: 0,
            oldest_ready_age_ms: None,
        }
    }
}

/// A failure's text as the server accepts it: 1 to [`MAX_TEXT_LEN`] bytes, cut at a
/// character boundary; an empty one becomes `failed`.
pub(crate) fn error_text(error: &str) -> String {
    if error.is_empty() {
        return "failed".to_owned();
    }
    let mut end = error.len().min(MAX_TEXT_LEN);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}

#[cfg(test)]
mod tests;
