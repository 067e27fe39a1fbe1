//! The work queue's gateway side: every op runs the tenant's queue script in Valkey
//! (`agentwire_valkey::TaskStore`) and appends the transitions it made to `agent.tasks`
//! before it answers, so nothing acknowledged is missing from the log.
//!
//! Order of writes, per op:
//! - **enqueue**: the `enqueued` record first (acknowledged by Kafka), then Valkey; a task
//!   Valkey did not take in is applied by the relay from the log. An idempotency key is
//!   reserved in Valkey before the append, so two enqueues with one key write one task.
//! - **claim, complete, fail, release, cancel, requeue, purge**: Valkey's script first (it
//!   decides atomically: one live lease per task), then the records. If the append fails the
//!   client gets `unavailable`; a retry of the same op with the same lease is answered from
//!   Valkey (`already`) and appends the record again, so the log never misses a transition
//!   a client was told about. A claim whose records did not land gives its leases back.
//! - **reply_to**: a completed or dead-lettered task with `reply_to` publishes an
//!   `agent.task.result` event into that session, best effort (a failed append is logged;
//!   a retried op may publish it twice: dedupe by `task_id`). The outcome itself is always
//!   readable with `GET /v1/tasks/…`.

mod commit;
mod http;
pub mod sweeper;
pub mod wake;

use std::time::Duration;

use agentwire_kafka::EventLog;
use agentwire_protocol::task::now_ms;
use agentwire_protocol::{
    Capability, ClaimRequest, ErrorCode, Event, EventType, TaskDoc, TaskEventKind, TaskRecord,
    TaskSpec, TaskState, TaskStatus, TaskView, Tenant,
};
use agentwire_valkey::{
    ClaimedTask, Enqueued, LeaseOutcome, QueueStats, TaskStore, Transition, ValkeyError,
};
use serde_json::value::RawValue;
use uuid::Uuid;

pub use http::routes;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics as m;

/// How long an idempotency key stays reserved while its enqueue record is appended.
const IDEMPOTENCY_RESERVATION: Duration = Duration::from_secs(60);
/// The event type of a task's outcome sent to its `reply_to` session.
pub const RESULT_EVENT_TYPE: &str = "agent.task.result";

/// Validates a client's task and checks that `principal` may enqueue it: to its capability,
/// and (the outcome is published there) into its `reply_to` session. HTTP and WebSocket.
pub fn admit(principal: &Principal, spec: TaskSpec, now_ms: u64) -> Result<TaskDoc, ApiError> {
    let doc = TaskDoc::from_spec(spec, now_ms)?;
    principal.check_enqueue(&doc.tenant, &doc.capability)?;
    if let Some(session) = &doc.reply_to {
        principal.check_publish(session)?;
    }
    Ok(doc)
}

/// Charges the tenants' publish quota, one unit per task (tasks count as events do).
pub async fn charge_quota(
    state: &crate::state::AppState,
    docs: &[TaskDoc],
) -> Result<(), ApiError> {
    crate::tenant_limits::charge_tenants(
        state.tenants(),
        docs.iter().map(|d| &d.tenant),
        Duration::from_millis(state.config().tenant_quota_timeout_ms),
        "the tenant is over its quota; no task was enqueued",
    )
    .await
}

/// What an enqueue answers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EnqueueAck {
    pub id: Uuid,
    pub state: TaskState,
    /// The idempotency key named an earlier task: `id` is that task's, nothing was written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The work queues as the gateway serves them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TaskQueue {
    store: TaskStore,
    /// Appends to `agent.tasks` (group commit).
    log: commit::Committer,
    /// The event log, for `reply_to` results.
    events: EventLog,
    wake: wake::Wakeups,
}

fn valkey(err: ValkeyError) -> ApiError {
    ApiError::unavailable("valkey", err)
}

fn refused(outcome: LeaseOutcome, id: Uuid) -> ApiError {
    match outcome {
        LeaseOutcome::Stale(state) => ApiError::new(
            ErrorCode::StaleLease,
            format!(
                "the lease is not task {id}'s current lease (the task is {}): it expired, was released or settled; drop the task",
                state.as_str()
            ),
        ),
        LeaseOutcome::WrongState(state) => ApiError::new(
            ErrorCode::WrongState,
            format!("task {id} is {}, which does not allow this", state.as_str()),
        ),
        LeaseOutcome::NotFound => not_found(id),
        LeaseOutcome::Done(_) | LeaseOutcome::Already(_) => {
            ApiError::new(ErrorCode::Internal, "not a refusal")
        }
    }
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no task {id} in this tenant (or it finished longer ago than the retention)"),
    )
}

/// The record kind that re-states a status after an `already` answer.
fn kind_of(state: TaskState) -> TaskEventKind {
    match state {
        TaskState::Completed => TaskEventKind::Completed,
        TaskState::Delayed => TaskEventKind::RetryScheduled,
        TaskState::Dead => TaskEventKind::DeadLettered,
        TaskState::Cancelled => TaskEventKind::Cancelled,
        TaskState::Ready => TaskEventKind::Released,
        TaskState::Claimed => TaskEventKind::Claimed,
    }
}

impl TaskQueue {
    pub fn new(store: TaskStore, log: EventLog, events: EventLog, wake: wake::Wakeups) -> Self {
        Self {
            store,
            log: commit::Committer::start(log),
            events,
            wake,
        }
    }

    pub fn store(&self) -> &TaskStore {
        &self.store
    }

    pub fn wake(&self) -> &wake::Wakeups {
        &self.wake
    }

    /// Appends the transitions (group-committed with others made meanwhile) and waits for
    /// Kafka to acknowledge them.
    pub async fn record(
        &self,
        tenant: &Tenant,
        transitions: &[Transition],
    ) -> Result<(), ApiError> {
        let records = transitions
            .iter()
            .map(|t| {
                metrics::counter!(m::TASK_TRANSITIONS, "kind" => t.kind.as_str()).increment(1);
                TaskRecord {
                    kind: t.kind,
                    tenant: tenant.clone(),
                    id: t.id,
                    doc: None,
                    status: t.status.clone(),
                }
            })
            .collect();
        self.log.append(records).await.map(drop)
    }

    /// Enqueues one task: appended to the log, then queued in Valkey.
    pub async fn enqueue(&self, doc: TaskDoc) -> Result<EnqueueAck, ApiError> {
        if let Some(key) = &doc.idempotency_key {
            let owner = self
                .store
                .reserve_idempotency(&doc.tenant, key, doc.id, IDEMPOTENCY_RESERVATION)
                .await
                .map_err(valkey)?;
            if owner != doc.id {
                return self.duplicate(&doc.tenant, owner).await;
            }
        }
        let now = now_ms();
        let delayed = doc.not_before_ms.is_some_and(|at| at > now);
        let record = TaskRecord {
            kind: TaskEventKind::Enqueued,
            tenant: doc.tenant.clone(),
            id: doc.id,
            status: TaskStatus {
                state: if delayed {
                    TaskState::Delayed
                } else {
                    TaskState::Ready
                },
                version: 1,
                attempt: 0,
                lease_id: None,
                lease_expires_at_ms: None,
                not_before_ms: doc.not_before_ms,
                worker: None,
                last_error: None,
                dead_reason: None,
                result: None,
                updated_at_ms: now,
            },
            doc: Some(doc),
        };
        let appended = self.log.append(vec![record.clone()]).await;
        let Some(doc) = record.doc else {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the record lost its task",
            ));
        };
        let appended = match appended {
            Ok(Some(appended)) => appended,
            Ok(None) => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "the enqueue record was not appended",
                ));
            }
            Err(err) => {
                // A record that may have landed keeps its key's reservation: the relay makes
                // it permanent if it did, a retry with the key is answered with this task.
                if let Some(key) = doc
                    .idempotency_key
                    .as_ref()
                    .filter(|_| err.code != ErrorCode::OutcomeUnknown)
                {
                    // Best effort: the reservation also expires on its own.
                    let _ = self
                        .store
                        .unreserve_idempotency(&doc.tenant, key, doc.id)
                        .await;
                }
                return Err(err);
            }
        };
        metrics::counter!(m::TASK_TRANSITIONS, "kind" => "enqueued").increment(1);
        match self.store.enqueue(&doc).await {
            Ok(Enqueued::Duplicate(first)) => return self.duplicate(&doc.tenant, first).await,
            Ok(Enqueued::New(_) | Enqueued::Exists) => {
                self.wake.local(&doc.tenant);
            }
            // In the log: the relay queues it from there.
            Err(err) => {
                tracing::warn!(error = %err, task = %doc.id, "enqueued in the log, Valkey will get it from the relay");
            }
        }
        Ok(EnqueueAck {
            id: doc.id,
            state: record.status.state,
            duplicate: false,
            partition: Some(appended.partition),
            offset: Some(appended.offset.0),
        })
    }

    async fn duplicate(&self, tenant: &Tenant, first: Uuid) -> Result<EnqueueAck, ApiError> {
        metrics::counter!(m::TASK_DUPLICATES).increment(1);
        let state = self
            .store
            .get(tenant, first)
            .await
            .map_err(valkey)?
            .map_or(TaskState::Ready, |v| v.status.state);
        Ok(EnqueueAck {
            id: first,
            state,
            duplicate: true,
            partition: None,
            offset: None,
        })
    }

    /// Hands out up to `claim.max` tasks; their `claimed` records are in the log before any
    /// is returned.
    pub async fn claim(
        &self,
        tenant: &Tenant,
        claim: &ClaimRequest,
    ) -> Result<Vec<ClaimedTask>, ApiError> {
        let started = std::time::Instant::now();
        let got = self
            .store
            .claim(
                tenant,
                &claim.capabilities,
                claim.max,
                Duration::from_millis(claim.lease_ms),
                &claim.worker,
            )
            .await
            .map_err(valkey)?;
        if let Err(err) = self.record(tenant, &got.transitions).await {
            for task in &got.tasks {
                if let Some(lease) = &task.status.lease_id {
                    let _ = self.store.release(tenant, task.doc.id, lease).await;
                }
            }
            return Err(err);
        }
        for t in &got.transitions {
            if t.kind == TaskEventKind::DeadLettered {
                self.reply(tenant, t).await;
            }
        }
        metrics::histogram!(m::TASK_CLAIM_SECONDS).record(started.elapsed().as_secs_f64());
        for task in &got.tasks {
            if task.status.attempt > 1 {
                metrics::counter!(m::TASK_REDELIVERIES).increment(1);
            }
            metrics::histogram!(m::TASK_ATTEMPTS).record(f64::from(task.status.attempt));
        }
        Ok(got.tasks)
    }

    /// Records what a lease op did (or re-records it after `already`), replies to
    /// `reply_to`, and returns the task's status.
    async fn settle(
        &self,
        tenant: &Tenant,
        id: Uuid,
        outcome: LeaseOutcome,
    ) -> Result<TaskStatus, ApiError> {
        let transitions = match outcome {
            LeaseOutcome::Done(transitions) => transitions,
            LeaseOutcome::Already(status) => vec![Transition {
                kind: kind_of(status.state),
                id,
                status,
            }],
            refusal => return Err(refused(refusal, id)),
        };
        self.record(tenant, &transitions).await?;
        let Some(last) = transitions.last() else {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "a lease op made no transition",
            ));
        };
        if matches!(
            last.kind,
            TaskEventKind::Completed | TaskEventKind::DeadLettered
        ) {
            self.reply(tenant, last).await;
        }
        if matches!(last.status.state, TaskState::Ready | TaskState::Delayed) {
            self.wake.local(tenant);
        }
        Ok(last.status.clone())
    }

    pub async fn complete(
        &self,
        tenant: &Tenant,
        id: Uuid,
        lease: &str,
        result: Option<&RawValue>,
    ) -> Result<TaskStatus, ApiError> {
        let outcome = self
            .store
            .complete(tenant, id, lease, result)
            .await
            .map_err(valkey)?;
        self.settle(tenant, id, outcome).await
    }

    pub async fn fail(
        &self,
        tenant: &Tenant,
        id: Uuid,
        lease: &str,
        error: &str,
        retryable: bool,
    ) -> Result<TaskStatus, ApiError> {
        let unit: f64 = rand::random();
        let outcome = self
            .store
            .fail(tenant, id, lease, error, retryable, unit)
            .await
            .map_err(valkey)?;
        self.settle(tenant, id, outcome).await
    }

    pub async fn release(
        &self,
        tenant: &Tenant,
        id: Uuid,
        lease: &str,
    ) -> Result<TaskStatus, ApiError> {
        let outcome = self
            .store
            .release(tenant, id, lease)
            .await
            .map_err(valkey)?;
        self.settle(tenant, id, outcome).await
    }

    pub async fn cancel(&self, tenant: &Tenant, id: Uuid) -> Result<TaskStatus, ApiError> {
        let outcome = self.store.cancel(tenant, id).await.map_err(valkey)?;
        self.settle(tenant, id, outcome).await
    }

    /// Extends a lease (not a transition: nothing is recorded). Returns the new expiry.
    pub async fn heartbeat(
        &self,
        tenant: &Tenant,
        id: Uuid,
        lease: &str,
        lease_ms: u64,
    ) -> Result<u64, ApiError> {
        match self
            .store
            .heartbeat(tenant, id, lease, Duration::from_millis(lease_ms))
            .await
            .map_err(valkey)?
        {
            Ok(at) => Ok(at),
            Err(refusal) => Err(refused(refusal, id)),
        }
    }

    /// Requeues (or purges) dead letters; returns the transitions made and the ids refused.
    pub async fn settle_dead(
        &self,
        tenant: &Tenant,
        capability: &Capability,
        ids: &[Uuid],
        purge: bool,
    ) -> Result<(Vec<Transition>, Vec<(String, String)>), ApiError> {
        let (transitions, refused) = self
            .store
            .settle_dead(tenant, capability, ids, purge)
            .await
            .map_err(valkey)?;
        self.record(tenant, &transitions).await?;
        if !purge && !transitions.is_empty() {
            self.wake.local(tenant);
        }
        Ok((transitions, refused))
    }

    pub async fn get(&self, tenant: &Tenant, id: Uuid) -> Result<TaskView, ApiError> {
        self.store
            .get(tenant, id)
            .await
            .map_err(valkey)?
            .ok_or_else(|| not_found(id))
    }

    pub async fn dead_letters(
        &self,
        tenant: &Tenant,
        capability: &Capability,
        offset: usize,
        count: usize,
    ) -> Result<Vec<TaskView>, ApiError> {
        self.store
            .dead_letters(tenant, capability, offset, count)
            .await
            .map_err(valkey)
    }

    pub async fn stats(
        &self,
        tenant: &Tenant,
        capabilities: &[Capability],
    ) -> Result<Vec<QueueStats>, ApiError> {
        let stats = self
            .store
            .stats(tenant, capabilities)
            .await
            .map_err(valkey)?;
        for s in &stats {
            for (state, n) in [
                ("ready", s.ready),
                ("delayed", s.delayed),
                ("in_flight", s.in_flight),
                ("dead", s.dead),
            ] {
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!(
                    m::TASK_QUEUE_DEPTH,
                    "tenant" => tenant.to_string(),
                    "capability" => s.capability.clone(),
                    "state" => state
                )
                .set(n as f64);
            }
        }
        Ok(stats)
    }

    /// Publishes a finished task's outcome into its `reply_to` session, if it has one. A
    /// failure is logged: the outcome stays readable with `GET /v1/tasks/…`.
    pub(crate) async fn reply(&self, tenant: &Tenant, transition: &Transition) {
        let view = match self.store.get(tenant, transition.id).await {
            Ok(Some(view)) => view,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, task = %transition.id, "reading the task to reply failed");
                return;
            }
        };
        let Some(session) = view.doc.reply_to.clone() else {
            return;
        };
        let Ok(event_type) = EventType::new(RESULT_EVENT_TYPE) else {
            return;
        };
        let mut event = Event::new(session, event_type);
        event.correlation_id = Some(
            view.doc
                .correlation_id
                .clone()
                .unwrap_or_else(|| view.doc.id.to_string()),
        );
        event.causation_id = Some(view.doc.id.to_string());
        event.subject = Some(view.doc.id.to_string());
        let data = serde_json::json!({
            "task_id": view.doc.id,
            "capability": view.doc.capability,
            "state": view.status.state,
            "attempt": view.status.attempt,
            "result": view.status.result,
            "error": view.status.last_error,
            "dead_reason": view.status.dead_reason,
        });
        event.content_type = Some("application/json".into());
        event.data = RawValue::from_string(data.to_string())
            .ok()
            .map(agentwire_protocol::Data::Json);
        let record = crate::publish::server_record(event);
        if let Err(err) = self.events.append(&record).await {
            tracing::warn!(error = %err, task = %transition.id, "the task's reply was not published");
        }
    }
}
