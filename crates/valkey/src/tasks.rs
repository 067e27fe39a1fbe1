//! The work queues: every task transition goes through `lua/tasks.lua`, one script per
//! tenant slot, so a claim is atomic and no task is ever held by two live leases.
//!
//! Like everything in Valkey the queues are a cache of the log: each transition the script
//! makes is returned as a [`Transition`] for the caller to append to `agent.tasks`, and
//! [`TaskStore::apply`] replays such records (newer versions only), which is how the relay
//! keeps the queues in step with the log and how `agentwire tasks rebuild` refills them.

use std::time::Duration;

use agentwire_protocol::{
    Capability, TaskDoc, TaskEventKind, TaskRecord, TaskState, TaskStatus, TaskView, Tenant,
};
use redis::{Script, Value};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::connection::Connection;
use crate::error::ValkeyError;
use crate::keys;

static TASKS: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/tasks.lua")));

/// Status fields in the order the script returns them.
const STATUS_FIELDS: usize = 11;

/// One transition the script made: to be appended to the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub kind: TaskEventKind,
    pub id: Uuid,
    pub status: TaskStatus,
}

/// A task handed to a worker.
#[derive(Clone, Debug)]
pub struct ClaimedTask {
    pub doc: TaskDoc,
    pub status: TaskStatus,
}

/// What a claim did: the tasks it handed out, and every transition (the claims themselves,
/// and expired leases or dead letters it found on the way) to append to the log.
#[derive(Clone, Debug, Default)]
pub struct Claim {
    pub tasks: Vec<ClaimedTask>,
    pub transitions: Vec<Transition>,
}

/// The answer to an enqueue.
#[derive(Clone, Debug, PartialEq)]
pub enum Enqueued {
    New(Transition),
    /// The idempotency key already names this other task.
    Duplicate(Uuid),
    /// The task is already stored (a replay of its record got there first).
    Exists,
}

/// The answer to a lease-holder's op (complete, fail, release) or a cancel.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseOutcome {
    /// Done; append these records.
    Done(Vec<Transition>),
    /// A retry of an op that already happened with this lease: the task's status.
    Already(TaskStatus),
    /// The lease is not the task's current one; the task is in this state.
    Stale(TaskState),
    NotFound,
    /// The op does not apply to a task in this state.
    WrongState(TaskState),
}

/// What replaying a record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Valkey already has this version or a newer one.
    Stale,
    /// A record of a task Valkey does not know, without the task's document.
    Unknown,
    /// An `enqueued` record whose idempotency key already names another task: not created.
    Duplicate,
    /// A task Valkey does not know, and the caller did not allow creating it.
    Absent,
}

/// One capability's queue.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub capability: String,
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
    /// How long the oldest ready task has waited (absent: none ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_ready_age_ms: Option<u64>,
}

/// The work queues of every tenant.
#[derive(Clone)]
pub struct TaskStore {
    conn: Connection,
    retention: Duration,
    /// The task topic whose tenants this store lists ([`keys::task_tenants`]).
    topic: String,
}

impl std::fmt::Debug for TaskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStore")
            .field("retention", &self.retention)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn bad(what: impl std::fmt::Display) -> ValkeyError {
    ValkeyError::Reply(format!("task script: {what}"))
}

fn text(value: &Value) -> Result<String, ValkeyError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(bad),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        Value::Nil => Ok(String::new()),
        other => Err(bad(format!("expected a string, got {other:?}"))),
    }
}

fn list(value: &Value) -> Result<&[Value], ValkeyError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(bad(format!("expected an array, got {other:?}"))),
    }
}

fn opt_num(s: &str) -> Result<Option<u64>, ValkeyError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(n as u64)
        })
        .ok_or_else(|| bad(format!("not a number: {s:?}")))
}

fn opt_text(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn state(s: &str) -> Result<TaskState, ValkeyError> {
    TaskState::parse(s).ok_or_else(|| bad(format!("unknown state {s:?}")))
}

/// Parses the script's status fields (`STATUS` in `tasks.lua`).
fn status(values: &[Value]) -> Result<TaskStatus, ValkeyError> {
    if values.len() < STATUS_FIELDS {
        return Err(bad("short status"));
    }
    let f: Vec<String> = values[..STATUS_FIELDS]
        .iter()
        .map(text)
        .collect::<Result<_, _>>()?;
    let result = match f[9].as_str() {
        "" => None,
        json => Some(RawValue::from_string(json.to_owned()).map_err(bad)?),
    };
    Ok(TaskStatus {
        state: state(&f[0])?,
        version: opt_num(&f[1])?.unwrap_or(0),
        attempt: u32::try_from(opt_num(&f[2])?.unwrap_or(0)).unwrap_or(u32::MAX),
        lease_id: opt_text(f[3].clone()),
        lease_expires_at_ms: opt_num(&f[4])?,
        not_before_ms: opt_num(&f[5])?,
        worker: opt_text(f[6].clone()),
        last_error: opt_text(f[7].clone()),
        dead_reason: opt_text(f[8].clone()),
        result,
        updated_at_ms: opt_num(&f[10])?.unwrap_or(0),
    })
}

fn uuid(value: &Value) -> Result<Uuid, ValkeyError> {
    let s = text(value)?;
    Uuid::parse_str(&s).map_err(|e| bad(format!("task id {s:?}: {e}")))
}

/// `{kind, id, status…}`.
fn transition(value: &Value) -> Result<Transition, ValkeyError> {
    let items = list(value)?;
    if items.len() < 2 + STATUS_FIELDS {
        return Err(bad("short transition"));
    }
    let kind = text(&items[0])?;
    Ok(Transition {
        kind: TaskEventKind::parse(&kind).ok_or_else(|| bad(format!("kind {kind:?}")))?,
        id: uuid(&items[1])?,
        status: status(&items[2..])?,
    })
}

fn transitions(value: &Value) -> Result<Vec<Transition>, ValkeyError> {
    list(value)?.iter().map(transition).collect()
}

fn doc(value: &Value) -> Result<TaskDoc, ValkeyError> {
    serde_json::from_str(&text(value)?).map_err(bad)
}

/// `{id, doc, status…}`.
fn view(value: &Value) -> Result<TaskView, ValkeyError> {
    let items = list(value)?;
    if items.len() < 2 + STATUS_FIELDS {
        return Err(bad("short task"));
    }
    Ok(TaskView {
        doc: doc(&items[1])?,
        status: status(&items[2..])?,
    })
}

/// The doc's fields the script decides with, beside the doc itself.
fn doc_fields(doc: &TaskDoc) -> Result<Vec<(String, String)>, ValkeyError> {
    let json = serde_json::to_string(doc).map_err(bad)?;
    let opt = |n: Option<u64>| n.map_or_else(String::new, |n| n.to_string());
    Ok(vec![
        ("doc".into(), json),
        ("cap".into(), doc.capability.to_string()),
        ("prio".into(), doc.priority.to_string()),
        ("enq".into(), doc.enqueued_at_ms.to_string()),
        ("max".into(), doc.max_attempts.to_string()),
        ("rinit".into(), doc.retry.initial_ms.to_string()),
        ("rmax".into(), doc.retry.max_ms.to_string()),
        ("rmult".into(), doc.retry.multiplier.to_string()),
        ("rjit".into(), doc.retry.jitter.to_string()),
        ("dl".into(), opt(doc.deadline_ms)),
        (
            "idem".into(),
            doc.idempotency_key.clone().unwrap_or_default(),
        ),
        ("nb".into(), opt(doc.not_before_ms)),
    ])
}

fn status_fields(status: &TaskStatus) -> Vec<(String, String)> {
    let opt = |n: Option<u64>| n.map_or_else(String::new, |n| n.to_string());
    vec![
        ("state".into(), status.state.as_str().into()),
        ("attempt".into(), status.attempt.to_string()),
        ("lease".into(), status.lease_id.clone().unwrap_or_default()),
        ("lexp".into(), opt(status.lease_expires_at_ms)),
        ("nb".into(), opt(status.not_before_ms)),
        ("worker".into(), status.worker.clone().unwrap_or_default()),
        ("err".into(), status.last_error.clone().unwrap_or_default()),
        (
            "reason".into(),
            status.dead_reason.clone().unwrap_or_default(),
        ),
        (
            "result".into(),
            status
                .result
                .as_ref()
                .map(|r| r.get().to_owned())
                .unwrap_or_default(),
        ),
        ("upd".into(), status.updated_at_ms.to_string()),
    ]
}

/// `ok` / `already` / `stale` / `not_found` / `wrong_state` answers.
fn lease_outcome(reply: &Value) -> Result<LeaseOutcome, ValkeyError> {
    let items = list(reply)?;
    let word = items.first().map(text).transpose()?.unwrap_or_default();
    let second = || {
        items
            .get(1)
            .ok_or_else(|| bad(format!("{word} without a value")))
    };
    Ok(match word.as_str() {
        "ok" => LeaseOutcome::Done(transitions(second()?)?),
        "already" => LeaseOutcome::Already(status(list(second()?)?)?),
        "stale" => LeaseOutcome::Stale(state(&text(second()?)?)?),
        "wrong_state" => LeaseOutcome::WrongState(state(&text(second()?)?)?),
        "not_found" => LeaseOutcome::NotFound,
        other => return Err(bad(format!("unexpected answer {other:?}"))),
    })
}

impl TaskStore {
    /// `retention`: how long a completed or cancelled task stays readable; `topic`: the task
    /// topic the store's transitions are recorded in (it names the list of tenants to sweep).
    pub fn new(conn: Connection, retention: Duration, topic: impl Into<String>) -> Self {
        Self {
            conn,
            retention,
            topic: topic.into(),
        }
    }

    fn call(&self, tenant: &Tenant, op: &str) -> redis::ScriptInvocation<'static> {
        let mut call = TASKS.key(keys::task_caps(tenant));
        call.arg(op).arg(millis(self.retention));
        call
    }

    async fn invoke(&self, call: &redis::ScriptInvocation<'_>) -> Result<Value, ValkeyError> {
        Ok(call.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Names `id` as the task of idempotency key `key` for `ttl` (while its enqueue record is
    /// appended). Returns the key's task: `id`, or the task another enqueue named first.
    pub async fn reserve_idempotency(
        &self,
        tenant: &Tenant,
        key: &str,
        id: Uuid,
        ttl: Duration,
    ) -> Result<Uuid, ValkeyError> {
        let mut call = self.call(tenant, "reserve_idem");
        call.arg(key).arg(id.to_string()).arg(millis(ttl));
        uuid(&self.invoke(&call).await?)
    }

    /// Drops a reservation whose enqueue was never written.
    pub async fn unreserve_idempotency(
        &self,
        tenant: &Tenant,
        key: &str,
        id: Uuid,
    ) -> Result<(), ValkeyError> {
        let mut call = self.call(tenant, "unreserve_idem");
        call.arg(key).arg(id.to_string());
        self.invoke(&call).await.map(drop)
    }

    /// Stores a new task (after its `enqueued` record is in the log): ready, or delayed
    /// until `not_before_ms`.
    pub async fn enqueue(&self, doc: &TaskDoc) -> Result<Enqueued, ValkeyError> {
        let mut call = self.call(&doc.tenant, "enqueue");
        call.arg(doc.id.to_string())
            .arg(doc.idempotency_key.as_deref().unwrap_or_default());
        for (name, value) in doc_fields(doc)? {
            call.arg(name).arg(value);
        }
        let reply = self.invoke(&call).await?;
        self.remember_tenant(&doc.tenant).await?;
        let items = list(&reply)?;
        match items.first().map(text).transpose()?.as_deref() {
            Some("duplicate") => Ok(Enqueued::Duplicate(uuid(
                items.get(1).ok_or_else(|| bad("duplicate without an id"))?,
            )?)),
            Some("exists") => Ok(Enqueued::Exists),
            _ => Ok(Enqueued::New(transition(&reply)?)),
        }
    }

    async fn remember_tenant(&self, tenant: &Tenant) -> Result<(), ValkeyError> {
        redis::cmd("SADD")
            .arg(keys::task_tenants(&self.topic))
            .arg(tenant.as_str())
            .exec_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Whether Valkey holds the queues as the log says ([`keys::task_queues_intact`]).
    pub async fn is_intact(&self) -> Result<bool, ValkeyError> {
        let n: u64 = redis::cmd("EXISTS")
            .arg(keys::task_queues_intact(&self.topic))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Records that the queues were rebuilt from the log.
    pub async fn mark_intact(&self) -> Result<(), ValkeyError> {
        redis::cmd("SET")
            .arg(keys::task_queues_intact(&self.topic))
            .arg("1")
            .exec_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Every tenant that has had a task.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, ValkeyError> {
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::task_tenants(&self.topic))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(names
            .into_iter()
            .filter_map(|n| Tenant::new(n).ok())
            .collect())
    }

    /// Replays a record of `agent.tasks`: stores its status if newer than Valkey's. A task
    /// Valkey does not know is created only with `may_create` ([`Applied::Absent`]
    /// otherwise): after Valkey lost its data, an old `enqueued` record must not bring back a
    /// task whose later records are not applied yet.
    pub async fn apply(
        &self,
        record: &TaskRecord,
        may_create: bool,
    ) -> Result<Applied, ValkeyError> {
        let mut call = self.call(&record.tenant, "apply");
        call.arg(record.id.to_string())
            .arg(record.status.version)
            .arg(
                record
                    .doc
                    .as_ref()
                    .and_then(|d| d.idempotency_key.clone())
                    .unwrap_or_default(),
            )
            .arg(if may_create { "1" } else { "0" });
        if let Some(doc) = &record.doc {
            for (name, value) in doc_fields(doc)? {
                call.arg(name).arg(value);
            }
        }
        for (name, value) in status_fields(&record.status) {
            call.arg(name).arg(value);
        }
        let reply = text(&self.invoke(&call).await?)?;
        if record.doc.is_some() {
            self.remember_tenant(&record.tenant).await?;
        }
        match reply.as_str() {
            "applied" => Ok(Applied::Applied),
            "stale" => Ok(Applied::Stale),
            "unknown" => Ok(Applied::Unknown),
            "duplicate" => Ok(Applied::Duplicate),
            "absent" => Ok(Applied::Absent),
            other => Err(bad(format!("apply answered {other:?}"))),
        }
    }

    /// Hands out up to `max` ready tasks of `capabilities` (highest priority first, then
    /// oldest), each under a new lease of `lease` held by `worker`.
    pub async fn claim(
        &self,
        tenant: &Tenant,
        capabilities: &[Capability],
        max: usize,
        lease: Duration,
        worker: &str,
    ) -> Result<Claim, ValkeyError> {
        let mut call = self.call(tenant, "claim");
        call.arg(max)
            .arg(millis(lease))
            .arg(worker)
            .arg(capabilities.len());
        for cap in capabilities {
            call.arg(cap.as_str());
        }
        for _ in 0..max {
            call.arg(Uuid::now_v7().to_string());
        }
        let reply = self.invoke(&call).await?;
        let parts = list(&reply)?;
        let (Some(out), Some(claimed)) = (parts.first(), parts.get(1)) else {
            return Err(bad("claim answered short"));
        };
        let tasks = list(claimed)?
            .iter()
            .map(|entry| {
                let view = view(entry)?;
                Ok(ClaimedTask {
                    doc: view.doc,
                    status: view.status,
                })
            })
            .collect::<Result<_, ValkeyError>>()?;
        Ok(Claim {
            tasks,
            transitions: transitions(out)?,
        })
    }

    /// Makes the time-driven transitions of a tenant's queues (due retries become ready,
    /// expired leases give their task back or dead-letter it) and returns those to record.
    pub async fn sweep(&self, tenant: &Tenant) -> Result<Vec<Transition>, ValkeyError> {
        transitions(&self.invoke(&self.call(tenant, "sweep")).await?)
    }

    /// Extends a lease by `lease` from now. `Ok(Ok(expiry))` or the refusal.
    pub async fn heartbeat(
        &self,
        tenant: &Tenant,
        id: Uuid,
        lease_id: &str,
        lease: Duration,
    ) -> Result<Result<u64, LeaseOutcome>, ValkeyError> {
        let mut call = self.call(tenant, "heartbeat");
        call.arg(id.to_string()).arg(lease_id).arg(millis(lease));
        let reply = self.invoke(&call).await?;
        let items = list(&reply)?;
        if items.first().map(text).transpose()?.as_deref() == Some("ok") {
            let at = items.get(1).map(text).transpose()?.unwrap_or_default();
            return Ok(Ok(opt_num(&at)?.unwrap_or(0)));
        }
        // Refusals have the same shape as the lease ops'.
        Ok(Err(lease_outcome(&reply)?))
    }

    pub async fn complete(
        &self,
        tenant: &Tenant,
        id: Uuid,
        lease_id: &str,
        result: Option<&RawValue>,
    ) -> Result<LeaseOutcome, ValkeyError> {
        let mut call = self.call(tenant, "complete");
        call.arg(id.to_string())
            .arg(lease_id)
            .arg(result.map(RawValue::get).unwrap_or_default());
        lease_outcome(&self.invoke(&call).await?)
    }

    /// `unit`: a uniform draw in `[0, 1)` for the retry's jitter.
    pub async fn fail(
        &self,
        tenant: &Tenant,
        id: Uuid,
        lease_id: &str,
        error: &str,
        retryable: bool,
        unit: f64,
    ) -> Result<LeaseOutcome, ValkeyError> {
        let mut call = self.call(tenant, "fail");
        call.arg(id.to_string())
            .arg(lease_id)
            .arg(error)
            .arg(if retryable { "1" } else { "0" })
            .arg(unit);
        lease_outcome(&self.invoke(&call).await?)
    }

    pub async fn release(
        &self,
        tenant: &Tenant,
        id: Uuid,
        lease_id: &str,
    ) -> Result<LeaseOutcome, ValkeyError> {
        let mut call = self.call(tenant, "release");
        call.arg(id.to_string()).arg(lease_id);
        lease_outcome(&self.invoke(&call).await?)
    }

    pub async fn cancel(&self, tenant: &Tenant, id: Uuid) -> Result<LeaseOutcome, ValkeyError> {
        let mut call = self.call(tenant, "cancel");
        call.arg(id.to_string());
        lease_outcome(&self.invoke(&call).await?)
    }

    /// Puts dead letters of `capability` back in the queue with fresh attempts (`requeue`)
    /// or removes them for good (`purge`). No ids: up to 1,000 of them. Returns the
    /// transitions and the ids refused, with their state (`not_found` if unknown).
    pub async fn settle_dead(
        &self,
        tenant: &Tenant,
        capability: &Capability,
        ids: &[Uuid],
        purge: bool,
    ) -> Result<(Vec<Transition>, Vec<(String, String)>), ValkeyError> {
        let mut call = self.call(tenant, if purge { "purge" } else { "requeue" });
        call.arg(capability.as_str());
        for id in ids {
            call.arg(id.to_string());
        }
        let reply = self.invoke(&call).await?;
        let parts = list(&reply)?;
        let (Some(out), Some(refused)) = (parts.first(), parts.get(1)) else {
            return Err(bad("requeue answered short"));
        };
        let refused = list(refused)?
            .iter()
            .map(|pair| {
                let pair = list(pair)?;
                Ok((
                    pair.first().map(text).transpose()?.unwrap_or_default(),
                    pair.get(1).map(text).transpose()?.unwrap_or_default(),
                ))
            })
            .collect::<Result<_, ValkeyError>>()?;
        Ok((transitions(out)?, refused))
    }

    /// Dead letters of `capability`, oldest first.
    pub async fn dead_letters(
        &self,
        tenant: &Tenant,
        capability: &Capability,
        offset: usize,
        count: usize,
    ) -> Result<Vec<TaskView>, ValkeyError> {
        let mut call = self.call(tenant, "dead");
        call.arg(capability.as_str()).arg(offset).arg(count.max(1));
        list(&self.invoke(&call).await?)?.iter().map(view).collect()
    }

    /// One task, or `None` when Valkey does not know it (never enqueued, or finished longer
    /// ago than the retention).
    pub async fn get(&self, tenant: &Tenant, id: Uuid) -> Result<Option<TaskView>, ValkeyError> {
        let mut call = self.call(tenant, "get");
        call.arg(id.to_string());
        let reply = self.invoke(&call).await?;
        let items = list(&reply)?;
        if items.is_empty() {
            return Ok(None);
        }
        Ok(Some(TaskView {
            doc: doc(&items[0])?,
            status: status(&items[1..])?,
        }))
    }

    /// Queue sizes per capability (none given: every capability of the tenant).
    pub async fn stats(
        &self,
        tenant: &Tenant,
        capabilities: &[Capability],
    ) -> Result<Vec<QueueStats>, ValkeyError> {
        let mut call = self.call(tenant, "stats");
        for cap in capabilities {
            call.arg(cap.as_str());
        }
        let reply = self.invoke(&call).await?;
        list(&reply)?
            .iter()
            .map(|row| {
                let row = list(row)?;
                let field = |i: usize| {
                    row.get(i)
                        .map(text)
                        .transpose()
                        .map(Option::unwrap_or_default)
                };
                let count = |i: usize| -> Result<u64, ValkeyError> {
                    Ok(opt_num(&field(i)?)?.unwrap_or(0))
                };
                let oldest = opt_num(&field(5)?)?;
                let now = opt_num(&field(6)?)?.unwrap_or(0);
                Ok(QueueStats {
                    capability: field(0)?,
                    ready: count(1)?,
                    delayed: count(2)?,
                    in_flight: count(3)?,
                    dead: count(4)?,
                    oldest_ready_age_ms: oldest.map(|at| now.saturating_sub(at)),
                })
            })
            .collect()
    }
}
