//! The work queue over HTTP: enqueue tasks (`POST /v1/tasks`), read one
//! (`GET /v1/tasks/{tenant}/{id}`), claim and settle them by lease
//! (`POST /v1/tasks/{tenant}/claim`, `…/{id}/{complete|fail|heartbeat|release|cancel}`) and
//! read queue sizes (`GET /v1/queues/{tenant}[/{capability}]`).
//!
//! These are methods of [`HttpClient`], so they share its connection pool, timeout and token.
//! A refusal comes back as [`ClientError::Http`] with the server's code, e.g.
//! [`ErrorCode::StaleLease`] when a lease expired, was released or the task moved on (drop
//! the task), read with [`ClientError::code`].
//!
//! For push delivery over a WebSocket with heartbeats, see [`crate::Worker`].

use agentwire_protocol::{Capability, ErrorCode, Tenant};
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

use crate::Result;
use crate::error::ClientError;
use crate::http::HttpClient;
use crate::task_types::{EnqueueAck, NewTask, QueueStats, Task, Transition, error_text};

#[derive(Serialize)]
struct ClaimOut<'a> {
    capabilities: &'a [Capability],
    max: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<&'a str>,
}

#[derive(serde::Deserialize)]
struct ClaimIn {
    tasks: Vec<Task>,
}

#[derive(serde::Deserialize)]
struct HeartbeatIn {
    lease_expires_at_ms: u64,
}

#[derive(serde::Deserialize)]
struct QueuesIn {
    queues: Vec<QueueStats>,
}

/// Percent-encodes a path segment taken from the caller (a task id), so it cannot leave its
/// segment. Tenants and capabilities are validated names and need no encoding.
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl HttpClient {
    /// Enqueues one task; the ack names its id (an earlier task's, with `duplicate`, when the
    /// idempotency key was used before).
    pub async fn enqueue(&self, task: &NewTask) -> Result<EnqueueAck> {
        let request = self.request(Method::POST, "/v1/tasks").json(task);
        self.send(request).await
    }

    /// Enqueues a batch (1 to 1,000 tasks); the acks come back in the order of `tasks`. A
    /// failure part way through answers [`ClientError::Http`] (503): some tasks may have been
    /// written, so retry with idempotency keys.
    pub async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<EnqueueAck>> {
        let request = self.request(Method::POST, "/v1/tasks").json(tasks);
        let acks: Vec<EnqueueAck> = self.send(request).await?;
        if acks.len() != tasks.len() {
            return Err(ClientError::Protocol(format!(
                "batch of {} tasks answered with {} acks",
                tasks.len(),
                acks.len()
            )));
        }
        Ok(acks)
    }

    /// One task: what it is and where it stands ([`ErrorCode::NotFound`] when the server
    /// does not know it, or it finished longer ago than the retention).
    pub async fn task(&self, tenant: &Tenant, id: &str) -> Result<Task> {
        let path = format!("/v1/tasks/{tenant}/{}", segment(id));
        self.send(self.request(Method::GET, &path)).await
    }

    /// Claims up to `max` (1 to 256) ready tasks of `capabilities`, each leased to the caller
    /// for `lease_ms` (the server's default, 30 s, when `None`) under the name `worker`. No
    /// task ready: an empty list. Settle each with [`HttpClient::complete`],
    /// [`HttpClient::fail`] or [`HttpClient::release`] using its [`Task::lease_id`], and
    /// [`HttpClient::heartbeat`] while working on it longer than its lease.
    pub async fn claim(
        &self,
        tenant: &Tenant,
        capabilities: &[Capability],
        max: usize,
        lease_ms: Option<u64>,
        worker: Option<&str>,
    ) -> Result<Vec<Task>> {
        let body = ClaimOut {
            capabilities,
            max,
            lease_ms,
            worker,
        };
        let path = format!("/v1/tasks/{tenant}/claim");
        let request = self.request(Method::POST, &path).json(&body);
        let answer: ClaimIn = self.send(request).await?;
        if answer.tasks.len() > max {
            return Err(ClientError::Protocol(format!(
                "a claim of {max} answered {} tasks",
                answer.tasks.len()
            )));
        }
        Ok(answer.tasks)
    }

    /// Completes a claimed task with an optional JSON `result`.
    pub async fn complete(
        &self,
        tenant: &Tenant,
        id: &str,
        lease_id: &str,
        result: Option<Value>,
    ) -> Result<Transition> {
        let mut body = serde_json::json!({ "lease_id": lease_id });
        if let Some(result) = result {
            body["result"] = result;
        }
        self.act(tenant, id, "complete", &body).await
    }

    /// Fails a claimed task. A `retryable` failure with attempts left is retried after the
    /// task's backoff; otherwise the task is dead-lettered. `error` is cut to the 1,024 bytes
    /// the server accepts (an empty one becomes `failed`).
    pub async fn fail(
        &self,
        tenant: &Tenant,
        id: &str,
        lease_id: &str,
        error: &str,
        retryable: bool,
    ) -> Result<Transition> {
        let body = serde_json::json!({
            "lease_id": lease_id,
            "error": error_text(error),
            "retryable": retryable,
        });
        self.act(tenant, id, "fail", &body).await
    }

    /// Extends a lease by `lease_ms` from now (the server's default, 30 s, when `None`);
    /// returns the new expiry in milliseconds since the Unix epoch.
    pub async fn heartbeat(
        &self,
        tenant: &Tenant,
        id: &str,
        lease_id: &str,
        lease_ms: Option<u64>,
    ) -> Result<u64> {
        let mut body = serde_json::json!({ "lease_id": lease_id });
        if let Some(lease_ms) = lease_ms {
            body["lease_ms"] = lease_ms.into();
        }
        let path = format!("/v1/tasks/{tenant}/{}/heartbeat", segment(id));
        let request = self.request(Method::POST, &path).json(&body);
        let answer: HeartbeatIn = self.send(request).await?;
        Ok(answer.lease_expires_at_ms)
    }

    /// Gives a claimed task back: ready again at once, the attempt not charged.
    pub async fn release(&self, tenant: &Tenant, id: &str, lease_id: &str) -> Result<Transition> {
        let body = serde_json::json!({ "lease_id": lease_id });
        self.act(tenant, id, "release", &body).await
    }

    /// Cancels a task that has not finished ([`ErrorCode::WrongState`] when it has).
    pub async fn cancel(&self, tenant: &Tenant, id: &str) -> Result<Transition> {
        self.act(tenant, id, "cancel", &serde_json::json!({})).await
    }

    /// The sizes of one capability's queue. A capability the tenant never used reads as an
    /// empty queue.
    pub async fn queue_stats(
        &self,
        tenant: &Tenant,
        capability: &Capability,
    ) -> Result<QueueStats> {
        let path = format!("/v1/queues/{tenant}/{capability}");
        let answer: Option<QueueStats> = self.send(self.request(Method::GET, &path)).await?;
        Ok(answer.unwrap_or_else(|| QueueStats::empty(capability.as_str())))
    }

    /// The sizes of every queue of `tenant` the caller may read.
    pub async fn queues(&self, tenant: &Tenant) -> Result<Vec<QueueStats>> {
        let path = format!("/v1/queues/{tenant}");
        let answer: QueuesIn = self.send(self.request(Method::GET, &path)).await?;
        Ok(answer.queues)
    }

    async fn act(
        &self,
        tenant: &Tenant,
        id: &str,
        action: &str,
        body: &Value,
    ) -> Result<Transition> {
        let path = format!("/v1/tasks/{tenant}/{}/{action}", segment(id));
        let request = self.request(Method::POST, &path).json(body);
        self.send(request).await
    }
}

/// Whether an error says the lease is gone (expired, released, or the task settled or moved
/// on): the task is no longer the caller's, so drop it.
pub fn is_stale_lease(err: &ClientError) -> bool {
    err.code() == Some(ErrorCode::StaleLease)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_cannot_leave_their_path_segment() {
        assert_eq!(
            segment("0190b6f2-8a1e-7cc0-9b8e-4b0a8f8f8f8f"),
            "0190b6f2-8a1e-7cc0-9b8e-4b0a8f8f8f8f"
        );
        assert_eq!(segment("../x?y"), "..%2Fx%3Fy");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn claim_bodies_match_the_server_shape() {
        let caps = [Capability::new("search").expect("valid")];
        let body = ClaimOut {
            capabilities: &caps,
            max: 4,
            lease_ms: None,
            worker: Some("w1"),
        };
        let json = serde_json::to_string(&body).expect("json");
        assert_eq!(json, r#"{"capabilities":["search"],"max":4,"worker":"w1"}"#);
        let parsed: agentwire_protocol::task_frames::ClaimBody =
            serde_json::from_str(&json).expect("the server reads it");
        assert_eq!(parsed.max, Some(4));
    }

    #[test]
    fn stale_leases_are_recognised_by_code() {
        let err = ClientError::Http {
            status: 409,
            code: Some(ErrorCode::StaleLease),
            message: "gone".into(),
            field: None,
        };
        assert!(is_stale_lease(&err));
        assert!(!is_stale_lease(&ClientError::Protocol("x".into())));
    }
}
