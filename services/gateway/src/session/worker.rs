//! The work-queue side of one WebSocket connection: task ops (`enqueue`, `complete`, `fail`,
//! `heartbeat`, `release`) answered with `task_ack` or `error` frames, and push delivery
//! (`consume`): tasks of the consumed capabilities are claimed and sent as `task` frames as
//! they become ready, never more unsettled at once than the prefetch (credit-based: each
//! task sent takes a credit, each complete, fail or release of it over this connection gives
//! it back). When the connection ends, every task it still holds is released (ready again,
//! the attempt not charged).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentwire_protocol::task::now_ms;
use agentwire_protocol::task_frames::{status_fields, task_ack_json, task_frame_json};
use agentwire_protocol::{ClaimRequest, ErrorFrame, ServerFrame, TaskOp, TaskView, Tenant};
use futures::stream::FuturesUnordered;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// How long an idle consumer waits for a wake before it claims again anyway.
const POLL: Duration = Duration::from_millis(1000);
/// How long a consumer waits after a failed claim.
const CLAIM_RETRY: Duration = Duration::from_millis(500);

type Reply = Pin<Box<dyn Future<Output = String> + Send>>;

/// Tasks pushed to this connection and not yet settled: lease → task (by lease: one task
/// may come back to the same connection under a new lease after its old one expired, and
/// each push holds a credit of its own).
type Held = Arc<Mutex<HashMap<String, Uuid>>>;

fn lock(held: &Held) -> std::sync::MutexGuard<'_, HashMap<String, Uuid>> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Consumer {
    tenant: Tenant,
    credit: Arc<Semaphore>,
    /// Ends the push loop after its current claim (whose tasks are still sent), never in the
    /// middle of one: a claim cut short would leave its tasks leased to no one.
    stop: CancellationToken,
    _task: JoinHandle<()>,
}

/// One connection's worker side.
pub struct Worker {
    app: AppState,
    replies: FuturesUnordered<Reply>,
    pushed: mpsc::Receiver<String>,
    push: mpsc::Sender<String>,
    consumer: Option<Consumer>,
    held: Held,
    /// The tenant of the tasks pushed to this connection (kept after `stop_consuming`: its
    /// held tasks are still released when the connection ends).
    held_tenant: Option<Tenant>,
}

fn error_json(request: Option<&str>, err: &ApiError) -> String {
    metrics::counter!(crate::metrics::ERRORS, "code" => err.code.as_str()).increment(1);
    ServerFrame::Error(ErrorFrame {
        id: request.map(str::to_owned),
        ..err.frame()
    })
    .to_json()
}

impl Worker {
    pub fn new(app: AppState) -> Self {
        let (push, pushed) = mpsc::channel(64);
        Self {
            app,
            replies: FuturesUnordered::new(),
            pushed,
            push,
            consumer: None,
            held: Arc::default(),
            held_tenant: None,
        }
    }

    /// How many pushed tasks the connection holds now (its load, for the registry).
    pub fn load(&self) -> crate::session::coordinator::Load {
        let held = self.held.clone();
        Arc::new(move || u32::try_from(lock(&held).len()).unwrap_or(u32::MAX))
    }

    /// The next frame to send: an answer or a pushed task. Pending while there is none.
    pub async fn next(&mut self) -> String {
        use futures::StreamExt as _;
        loop {
            tokio::select! {
                Some(reply) = self.replies.next() => return reply,
                Some(task) = self.pushed.recv() => return task,
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// Starts `op`; its answer comes out of [`Self::next`].
    pub fn handle(&mut self, op: TaskOp, principal: &Principal) {
        let request = op.id().map(str::to_owned);
        match self.start(op, principal) {
            Ok(Some(reply)) => self.replies.push(reply),
            Ok(None) => {}
            Err(err) => {
                let frame = error_json(request.as_deref(), &err);
                self.replies.push(Box::pin(std::future::ready(frame)));
            }
        }
    }

    /// The tenant of an op: the one it names (which the token must allow), else the token's,
    /// else (authentication off) the consumer's.
    fn tenant(&self, principal: &Principal, named: Option<Tenant>) -> Result<Tenant, ApiError> {
        let tenant = named
            .or_else(|| principal.tenant().cloned())
            .or_else(|| self.consumer.as_ref().map(|c| c.tenant.clone()))
            .ok_or_else(|| {
                ApiError::from(agentwire_protocol::ProtocolError::invalid(
                    "tenant",
                    "is required with authentication off",
                ))
            })?;
        principal.check_tenant(&tenant)?;
        Ok(tenant)
    }

    fn start(&mut self, op: TaskOp, principal: &Principal) -> Result<Option<Reply>, ApiError> {
        let app = self.app.clone();
        let request = op.id().map(str::to_owned);
        match op {
            TaskOp::Enqueue { task, .. } => {
                let doc = crate::tasks::admit(principal, *task, now_ms())?;
                Ok(Some(Box::pin(async move {
                    if let Err(err) =
                        crate::tasks::charge_quota(&app, std::slice::from_ref(&doc)).await
                    {
                        return error_json(request.as_deref(), &err);
                    }
                    match app.tasks().enqueue(doc).await {
                        Ok(ack) => task_ack_json(
                            request.as_deref(),
                            Some(&ack.id),
                            serde_json::to_value(&ack).unwrap_or_default(),
                        ),
                        Err(err) => error_json(request.as_deref(), &err),
                    }
                })))
            }
            TaskOp::Consume { claim, tenant, .. } => {
                if self.consumer.is_some() {
                    return Err(ApiError::new(
                        agentwire_protocol::ErrorCode::AlreadySubscribed,
                        "this connection already consumes; stop_consuming first",
                    ));
                }
                let tenant = self.tenant(principal, tenant)?;
                for capability in &claim.capabilities {
                    principal.check_consume(&tenant, capability)?;
                }
                let credit = Arc::new(Semaphore::new(claim.max));
                let ack = task_ack_json(
                    request.as_deref(),
                    None,
                    serde_json::json!({
                        "consuming": claim.capabilities,
                        "prefetch": claim.max,
                        "lease_ms": claim.lease_ms,
                    }),
                );
                let stop = CancellationToken::new();
                let task = tokio::spawn(consume(
                    Push {
                        app,
                        tenant: tenant.clone(),
                        credit: credit.clone(),
                        held: self.held.clone(),
                        out: self.push.clone(),
                        stop: stop.clone(),
                    },
                    claim,
                ));
                self.held_tenant = Some(tenant.clone());
                self.consumer = Some(Consumer {
                    tenant,
                    credit,
                    stop,
                    _task: task,
                });
                Ok(Some(Box::pin(std::future::ready(ack))))
            }
            TaskOp::StopConsuming { .. } => {
                if let Some(consumer) = self.consumer.take() {
                    consumer.stop.cancel();
                }
                Ok(Some(Box::pin(std::future::ready(task_ack_json(
                    request.as_deref(),
                    None,
                    serde_json::json!({"consuming": []}),
                )))))
            }
            TaskOp::Complete {
                task_id,
                lease_id,
                result,
                tenant,
                ..
            } => self.lease_op(
                principal,
                tenant,
                request,
                task_id,
                lease_id,
                move |app, tenant, id, lease| {
                    Box::pin(async move {
                        app.tasks()
                            .complete(&tenant, id, &lease, result.as_deref())
                            .await
                    })
                },
            ),
            TaskOp::Fail {
                task_id,
                lease_id,
                error,
                retryable,
                tenant,
                ..
            } => self.lease_op(
                principal,
                tenant,
                request,
                task_id,
                lease_id,
                move |app, tenant, id, lease| {
                    Box::pin(async move {
                        app.tasks()
                            .fail(&tenant, id, &lease, &error, retryable)
                            .await
                    })
                },
            ),
            TaskOp::Release {
                task_id,
                lease_id,
                tenant,
                ..
            } => self.lease_op(
                principal,
                tenant,
                request,
                task_id,
                lease_id,
                |app, tenant, id, lease| {
                    Box::pin(async move { app.tasks().release(&tenant, id, &lease).await })
                },
            ),
            TaskOp::Heartbeat {
                task_id,
                lease_id,
                lease_ms,
                tenant,
                ..
            } => {
                let tenant = self.tenant(principal, tenant)?;
                principal.check_worker(&tenant)?;
                Ok(Some(Box::pin(async move {
                    match app
                        .tasks()
                        .heartbeat(&tenant, task_id, &lease_id, lease_ms)
                        .await
                    {
                        Ok(at) => task_ack_json(
                            request.as_deref(),
                            Some(&task_id),
                            serde_json::json!({"lease_expires_at_ms": at}),
                        ),
                        Err(err) => error_json(request.as_deref(), &err),
                    }
                })))
            }
        }
    }

    /// Complete, fail or release: runs `op`, and gives the credit of a pushed task back once
    /// it is settled (or its lease turned out stale).
    fn lease_op(
        &mut self,
        principal: &Principal,
        tenant: Option<Tenant>,
        request: Option<String>,
        task_id: Uuid,
        lease_id: String,
        op: impl FnOnce(
            AppState,
            Tenant,
            Uuid,
            String,
        ) -> Pin<
            Box<dyn Future<Output = Result<agentwire_protocol::TaskStatus, ApiError>> + Send>,
        >,
    ) -> Result<Option<Reply>, ApiError> {
        let tenant = self.tenant(principal, tenant)?;
        principal.check_worker(&tenant)?;
        let held = self.held.clone();
        let credit = self.consumer.as_ref().map(|c| c.credit.clone());
        let answer = op(self.app.clone(), tenant, task_id, lease_id.clone());
        Ok(Some(Box::pin(async move {
            let outcome = answer.await;
            let settled = match &outcome {
                Ok(_) => true,
                Err(err) => matches!(
                    err.code,
                    agentwire_protocol::ErrorCode::StaleLease
                        | agentwire_protocol::ErrorCode::NotFound
                ),
            };
            if settled {
                let mine = {
                    let mut held = lock(&held);
                    if held.get(&lease_id) == Some(&task_id) {
                        held.remove(&lease_id);
                        true
                    } else {
                        false
                    }
                };
                if let (true, Some(credit)) = (mine, credit) {
                    credit.add_permits(1);
                }
            }
            match outcome {
                Ok(status) => {
                    task_ack_json(request.as_deref(), Some(&task_id), status_fields(&status))
                }
                Err(err) => error_json(request.as_deref(), &err),
            }
        })))
    }
}

impl Drop for Worker {
    /// Gives back every task the connection still holds.
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            // The push loop finds the connection gone and releases what it claims from now.
            consumer.stop.cancel();
        }
        let tenant = self.held_tenant.take();
        let held: Vec<(String, Uuid)> = lock(&self.held).drain().collect();
        let (Some(tenant), false) = (tenant, held.is_empty()) else {
            return;
        };
        let app = self.app.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            release_all(&app, &tenant, held).await;
        });
    }
}

/// What a push loop works with.
struct Push {
    app: AppState,
    tenant: Tenant,
    credit: Arc<Semaphore>,
    held: Held,
    out: mpsc::Sender<String>,
    stop: CancellationToken,
}

impl Push {
    /// The connection is gone: gives back every task it still holds.
    async fn release_held(&self) {
        let held: Vec<(String, Uuid)> = lock(&self.held).drain().collect();
        release_all(&self.app, &self.tenant, held).await;
    }
}

/// Gives back tasks a gone connection held (`(lease, task)`): ready again, the attempt not
/// charged. One whose lease already ended is left as it is.
async fn release_all(app: &AppState, tenant: &Tenant, held: Vec<(String, Uuid)>) {
    for (lease, id) in held {
        if let Err(err) = app.tasks().release(tenant, id, &lease).await
            && err.code != agentwire_protocol::ErrorCode::StaleLease
        {
            tracing::warn!(error = %err.message, task = %id, "releasing a dropped connection's task failed; its lease will expire");
        }
    }
}

/// Push delivery: claims as many tasks as there is credit, sends them, and waits for a wake
/// (or the poll interval) when the queues are empty. Ends after `stop` (a `stop_consuming`:
/// what it claimed is still sent) or once the connection is gone (what it claimed is
/// released).
async fn consume(push: Push, claim: ClaimRequest) {
    let Push {
        app,
        tenant,
        credit,
        held,
        out,
        stop,
    } = &push;
    let mut wake = app.tasks().wake().watch(tenant);
    loop {
        let first = tokio::select! {
            permit = credit.clone().acquire_owned() => permit,
            () = stop.cancelled() => return,
        };
        let Ok(first) = first else {
            return;
        };
        first.forget();
        let mut n = 1;
        while n < claim.max {
            match credit.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        wake.borrow_and_update();
        let request = ClaimRequest {
            max: n,
            ..claim.clone()
        };
        match app.tasks().claim(tenant, &request).await {
            Ok(tasks) => {
                let got = tasks.len();
                credit.add_permits(n - got);
                {
                    let mut held = lock(held);
                    for task in &tasks {
                        if let Some(lease) = &task.status.lease_id {
                            held.insert(lease.clone(), task.doc.id);
                        }
                    }
                }
                for task in tasks {
                    let frame = task_frame_json(&TaskView {
                        doc: task.doc,
                        status: task.status,
                    });
                    if out.send(frame).await.is_err() {
                        push.release_held().await;
                        return;
                    }
                }
                if out.is_closed() {
                    push.release_held().await;
                    return;
                }
                if got < n {
                    tokio::select! {
                        changed = wake.changed() => if changed.is_err() { return },
                        () = tokio::time::sleep(POLL) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
            Err(err) => {
                credit.add_permits(n);
                tracing::debug!(error = %err.message, %tenant, "push claim failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(CLAIM_RETRY) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}
