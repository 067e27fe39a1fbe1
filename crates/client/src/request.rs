//! Request–reply between agents on the work queue: [`Requester::request`] enqueues a task
//! for a capability with `reply_to` = the requester's inbox session and a fresh correlation
//! id, and waits for the task's outcome (`agent.task.result`) on that session, or times out
//! with [`ClientError::RequestTimedOut`] (code `request_timeout`).
//!
//! Durable and at-least-once: the request is a task, so a responder that dies mid-request
//! gives it back (its lease runs out, or its connection's tasks are released) and another
//! responder takes it; the requester sees exactly one reply per request (later copies of the
//! same correlation id, e.g. from a retried completion, are dropped and counted). The
//! requester and the responders may be on different gateways: the reply travels through
//! the log. A responder is a [`crate::Worker`] whose handler's `Ok` value is the reply
//! (register it with [`crate::WorkerBuilder::register_as`] to make it discoverable).
//!
//! A request that timed out is cancelled (best effort) so it is not run late, and the task
//! carries a deadline of its timeout, so it is dead-lettered rather than handed out after.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire_protocol::{Capability, Event, SessionKey, Tenant};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::Result;
use crate::error::{Chain, ClientError};
use crate::http::HttpClient;
use crate::subscriber::{Subscriber, SubscriberConfig};
use crate::task_types::NewTask;

/// The event type of a task's outcome in its `reply_to` session.
pub const RESULT_EVENT_TYPE: &str = "agent.task.result";

/// One request's answer: the task's outcome.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Reply {
    pub task_id: Uuid,
    /// `completed`, or `dead` (failed for good: `error` and `dead_reason` say why).
    pub state: String,
    pub attempt: u32,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub dead_reason: Option<String>,
}

impl Reply {
    /// The responder's result, or its failure as an error message.
    pub fn into_result(self) -> std::result::Result<Value, String> {
        if self.state == "completed" {
            Ok(self.result.unwrap_or(Value::Null))
        } else {
            Err(self
                .error
                .or(self.dead_reason)
                .unwrap_or_else(|| format!("the request ended {}", self.state)))
        }
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Reply>>> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends requests to capabilities and receives their replies on an inbox session.
#[derive(Debug)]
pub struct Requester {
    http: HttpClient,
    tenant: Tenant,
    inbox: SessionKey,
    pending: Pending,
    duplicates: Arc<AtomicU64>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl Requester {
    /// Follows `inbox` (a session of the requester's tenant that only its replies go to; the
    /// token must allow publishing into it and subscribing to it) at `ws_url`, and sends
    /// requests with `http`. Returns once the inbox is followed.
    pub async fn connect(
        ws_url: impl Into<String>,
        http: HttpClient,
        inbox: SessionKey,
        config: SubscriberConfig,
    ) -> Result<Self> {
        let subscriber =
            Subscriber::connect_with(ws_url, vec![(inbox.clone(), None)], config).await?;
        let pending = Pending::default();
        let duplicates = Arc::new(AtomicU64::new(0));
        let listener = tokio::spawn(listen(subscriber, pending.clone(), duplicates.clone()));
        Ok(Self {
            http,
            tenant: inbox.tenant.clone(),
            inbox,
            pending,
            duplicates,
            listener,
        })
    }

    /// Asks an agent of `capability` to handle `payload`; the reply, or
    /// [`ClientError::RequestTimedOut`] after `timeout`.
    pub async fn request(
        &self,
        capability: Capability,
        payload: Value,
        timeout: Duration,
    ) -> Result<Reply> {
        let correlation = Uuid::now_v7().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(correlation.clone(), tx);
        let mut task = NewTask::new(self.tenant.clone(), capability);
        task.payload = Some(payload);
        task.reply_to = Some(self.inbox.clone());
        task.correlation_id = Some(correlation.clone());
        // A retried enqueue makes one task.
        task.idempotency_key = Some(correlation.clone());
        task.deadline_ms = Some(unix_ms(SystemTime::now() + timeout));
        let started = tokio::time::Instant::now();
        let ack = match tokio::time::timeout(timeout, self.http.enqueue(&task)).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(err)) => {
                lock(&self.pending).remove(&correlation);
                return Err(err);
            }
            Err(_) => {
                lock(&self.pending).remove(&correlation);
                return Err(ClientError::RequestTimedOut(timeout));
            }
        };
        match tokio::time::timeout(timeout.saturating_sub(started.elapsed()), rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ClientError::Protocol(format!(
                "the requester stopped listening before task {} was answered",
                ack.id
            ))),
            Err(_) => {
                lock(&self.pending).remove(&correlation);
                // Not run late if nobody took it yet (one running finishes; its reply is
                // dropped). Best effort: the deadline dead-letters it anyway.
                if let Err(err) = self.http.cancel(&self.tenant, &ack.id.to_string()).await {
                    debug!(task = %ack.id, error = %Chain(&err), "a timed-out request was not cancelled");
                }
                Err(ClientError::RequestTimedOut(timeout))
            }
        }
    }

    /// Replies that arrived for a request already answered (or given up) and were dropped.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Hands every reply on the inbox to its request; drops and counts the rest.
async fn listen(mut subscriber: Subscriber, pending: Pending, duplicates: Arc<AtomicU64>) {
    loop {
        match subscriber.next().await {
            Ok(delivery) => on_event(&delivery.event, &pending, &duplicates),
            Err(err) => warn!(error = %Chain(&err), "the requester's inbox reported an error"),
        }
    }
}

fn on_event(event: &Event, pending: &Pending, duplicates: &AtomicU64) {
    if event.event_type.as_str() != RESULT_EVENT_TYPE {
        return;
    }
    let Some(correlation) = &event.correlation_id else {
        return;
    };
    let Some(tx) = lock(pending).remove(correlation) else {
        duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let reply = event.data.as_ref().and_then(|data| match data {
        agentwire_protocol::Data::Json(json) => serde_json::from_str::<Reply>(json.get()).ok(),
        agentwire_protocol::Data::Binary(_) => None,
    });
    match reply {
        Some(reply) => {
            let _ = tx.send(reply);
        }
        None => warn!(correlation, "a reply whose data is not a task outcome"),
    }
}
