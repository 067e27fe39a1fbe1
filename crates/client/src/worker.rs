//! A push worker: consumes tasks of some capabilities over one WebSocket and runs a handler
//! for each, keeping their leases alive, settling them with the handler's outcome and
//! surviving lost connections.
//!
//! ```no_run
//! # async fn demo() -> agentwire_client::Result<()> {
//! use std::time::Duration;
//! use agentwire_client::{TaskFailure, Worker};
//! use agentwire_protocol::{Capability, Tenant};
//!
//! let worker = Worker::builder("ws://127.0.0.1:8080/v1/ws", Tenant::new("acme")?)
//!     .capabilities([Capability::new("web_search")?])
//!     .prefetch(8)
//!     .lease(Duration::from_secs(30))
//!     .build()?;
//! let stats = worker.stats();
//! worker
//!     .run(
//!         |task| async move {
//!             let query = task.payload.unwrap_or_default();
//!             if query.is_null() {
//!                 return Err(TaskFailure::permanent("no query"));
//!             }
//!             Ok(serde_json::json!({ "hits": [] }))
//!         },
//!         async { let _ = tokio::signal::ctrl_c().await; },
//!     )
//!     .await?;
//! println!("completed {}", stats.completed());
//! # Ok(()) }
//! ```
//!
//! How it works: the worker sends `consume` with `prefetch` as its credit, and the gateway
//! pushes at most that many unsettled tasks. Up to `prefetch` handlers run at once (a task
//! pushed while all are busy waits, its lease kept alive). While a task is held its lease is
//! extended with a `heartbeat` every lease/3; when the handler returns, the task is
//! completed with its result or failed with its [`TaskFailure`].
//!
//! **Delivery is at least once: handlers must be idempotent.** A task whose lease is lost (a
//! handler slower than its lease with heartbeats failing, or the connection dropping: the
//! gateway then releases every task the connection held) is handed out again, perhaps to
//! another worker, while the first handler may still be running. The worker reconnects with
//! jittered exponential backoff and consumes again; a handler that finishes after that gets
//! `stale_lease`, which is logged and counted ([`WorkerStats::stale`]), and its result is
//! dropped.
//!
//! Shutdown: when the `shutdown` future given to [`Worker::run`] completes, the worker stops
//! consuming, releases tasks waiting for a handler, gives running handlers
//! [`WorkerBuilder::shutdown_grace`] to finish (their outcomes are sent), then aborts the
//! rest and releases their tasks, and returns once the server answered (or after
//! [`WorkerBuilder::request_timeout`] more).

mod frames;
mod ledger;
mod run;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentwire_protocol::task_frames::{DEFAULT_LEASE_MS, LEASE_RANGE_MS, MAX_CLAIM};
use agentwire_protocol::{AgentId, Capability, Tenant};
use serde_json::Value;

use crate::Result;
use crate::error::ClientError;
use crate::task_types::Task;
use crate::token::TokenProvider;
use crate::ws::DEFAULT_REQUEST_TIMEOUT;

/// Why a handler did not complete its task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailure {
    /// What went wrong, kept with the task (cut to 1,024 bytes).
    pub error: String,
    /// Retry the task (after its backoff, while attempts are left) rather than dead-letter it.
    pub retryable: bool,
}

impl TaskFailure {
    /// A failure worth retrying (a timeout, an unavailable dependency).
    pub fn retryable(error: impl std::fmt::Display) -> Self {
        Self {
            error: error.to_string(),
            retryable: true,
        }
    }

    /// A failure no retry will fix (invalid input): the task is dead-lettered.
    pub fn permanent(error: impl std::fmt::Display) -> Self {
        Self {
            error: error.to_string(),
            retryable: false,
        }
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.retryable {
            "retryable"
        } else {
            "permanent"
        };
        write!(f, "{kind} failure: {}", self.error)
    }
}

/// Counters of a [`Worker`], readable while it runs (share it with [`Worker::stats`]).
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub(crate) received: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

impl WorkerStats {
    /// Tasks pushed to the worker.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Tasks completed (the server confirmed).
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
    /// Tasks failed (the server confirmed), retryable or not.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Tasks given back (on shutdown, or a failure the server refused).
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }
    /// Tasks whose lease turned out to be gone: taken away, their outcome dropped.
    pub fn stale(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }
    /// Refusals other than a lost lease (a result the server would not take, …).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Connections opened after the first.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

/// A worker's settings, checked by [`WorkerBuilder::build`].
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) tenant: Tenant,
    pub(crate) capabilities: Vec<Capability>,
    pub(crate) prefetch: usize,
    pub(crate) lease: Duration,
    pub(crate) name: Option<String>,
    pub(crate) token: Option<TokenProvider>,
    pub(crate) min_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) refresh_margin: Duration,
    pub(crate) shutdown_grace: Duration,
    /// Registered in the agent registry under this id on every connection (see
    /// [`WorkerBuilder::register_as`]).
    pub(crate) agent_id: Option<AgentId>,
}

/// Configures a [`Worker`]; start with [`Worker::builder`].
#[derive(Clone, Debug)]
pub struct WorkerBuilder(Settings);

impl WorkerBuilder {
    /// Registers the worker in the agent registry as `agent_id`, with its capabilities and
    /// its prefetch as `max_concurrency`, on every connection before it consumes: it is
    /// listed by `discover` while connected (the connection heartbeats for it, reporting the
    /// tasks it holds) and leaves the registry when the connection ends. A refused
    /// registration stops the worker as a refused `consume` does.
    pub fn register_as(mut self, agent_id: AgentId) -> Self {
        self.0.agent_id = Some(agent_id);
        self
    }

    /// The capabilities to consume (1 to 32); replaces earlier ones.
    pub fn capabilities(mut self, capabilities: impl IntoIterator<Item = Capability>) -> Self {
        self.0.capabilities = capabilities.into_iter().collect();
        self
    }

    /// How many tasks may be held at once, and so how many handlers run at once (1 to 256;
    /// default 1).
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.0.prefetch = prefetch;
        self
    }

    /// Each task's lease (1 ms to 1 h, whole milliseconds; default 30 s), extended every
    /// third of it while the task is held.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.0.lease = lease;
        self
    }

    /// The worker's name, recorded with the leases it holds.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.0.name = Some(name.into());
        self
    }

    /// Authenticates every connection with the provider's current token and refreshes it
    /// before it expires (as [`crate::Subscriber`] does).
    pub fn token(mut self, provider: TokenProvider) -> Self {
        self.0.token = Some(provider);
        self
    }

    /// The first and the longest delay between reconnection attempts (default 100 ms and
    /// 5 s); each delay is jittered.
    pub fn reconnect_delays(mut self, min: Duration, max: Duration) -> Self {
        (self.0.min_delay, self.0.max_delay) = (min, max);
        self
    }

    /// Bounds the handshake, and the wait for the server's last answers on shutdown (default
    /// 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.0.request_timeout = timeout;
        self
    }

    /// Silence after which the worker pings; a second one as long drops the connection
    /// (default 15 s).
    pub fn keepalive(mut self, keepalive: Duration) -> Self {
        self.0.keepalive = keepalive;
        self
    }

    /// How long before its token expires the worker sends a fresh one (default 30 s).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.0.refresh_margin = margin;
        self
    }

    /// How long running handlers may go on after shutdown before they are aborted and their
    /// tasks released (default 5 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.0.shutdown_grace = grace;
        self
    }

    /// Checks the settings against the server's limits.
    pub fn build(self) -> Result<Worker> {
        let s = &self.0;
        let invalid = |setting: &'static str, reason: String| {
            Err(ClientError::InvalidConfig { setting, reason })
        };
        if !(s.url.starts_with("ws://") || s.url.starts_with("wss://")) {
            return Err(ClientError::InvalidUrl {
                url: s.url.clone(),
                reason: "must start with ws:// or wss://",
            });
        }
        if !(1..=32).contains(&s.capabilities.len()) {
            return invalid("capabilities", "must name 1 to 32 capabilities".into());
        }
        if !(1..=MAX_CLAIM).contains(&s.prefetch) {
            return invalid("prefetch", format!("must be 1 to {MAX_CLAIM}"));
        }
        let lease_ms = u64::try_from(s.lease.as_millis()).unwrap_or(u64::MAX);
        if !LEASE_RANGE_MS.contains(&lease_ms) {
            return invalid(
                "lease",
                format!("must be 1 ms to {} ms", LEASE_RANGE_MS.end()),
            );
        }
        if s.keepalive.is_zero() {
            return invalid("keepalive", "must be more than zero".into());
        }
        Ok(Worker {
            settings: Arc::new(self.0),
            stats: Arc::default(),
        })
    }

    /// [`WorkerBuilder::build`], then [`Worker::run`].
    pub async fn run<H, F>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()>
    where
        H: Fn(Task) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Value, TaskFailure>> + Send + 'static,
    {
        self.build()?.run(handler, shutdown).await
    }
}

/// A push worker (see the module docs).
#[derive(Debug)]
pub struct Worker {
    settings: Arc<Settings>,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// A worker for `tenant` at the gateway's WebSocket URL (e.g.
    /// `ws://127.0.0.1:8080/v1/ws`); name its capabilities with
    /// [`WorkerBuilder::capabilities`].
    pub fn builder(ws_url: impl Into<String>, tenant: Tenant) -> WorkerBuilder {
        WorkerBuilder(Settings {
            url: ws_url.into(),
            tenant,
            capabilities: Vec::new(),
            prefetch: 1,
            lease: Duration::from_millis(DEFAULT_LEASE_MS),
            name: None,
            token: None,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keepalive: Duration::from_secs(15),
            refresh_margin: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            agent_id: None,
        })
    }

    /// The worker's counters, live while it runs.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs `handler` for every task pushed until `shutdown` completes (see the module docs
    /// for how in-flight tasks end). Lost connections are retried forever; it returns an
    /// error only for an unusable URL or a `consume` the server refuses for good (a
    /// forbidden tenant or capability, say), after releasing what it held.
    pub async fn run<H, F>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()>
    where
        H: Fn(Task) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Value, TaskFailure>> + Send + 'static,
    {
        run::run(self.settings, self.stats, handler, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> WorkerBuilder {
        Worker::builder(
            "ws://127.0.0.1:1/v1/ws",
            Tenant::new("acme").expect("valid"),
        )
        .capabilities([Capability::new("search").expect("valid")])
    }

    #[test]
    fn settings_are_checked_against_the_server_limits() {
        assert!(
            builder()
                .prefetch(8)
                .lease(Duration::from_secs(60))
                .build()
                .is_ok()
        );
        let setting = |b: WorkerBuilder| match b.build() {
            Err(ClientError::InvalidConfig { setting, .. }) => setting,
            other => panic!("expected an invalid setting, got {other:?}"),
        };
        assert_eq!(setting(builder().prefetch(0)), "prefetch");
        assert_eq!(setting(builder().prefetch(MAX_CLAIM + 1)), "prefetch");
        assert_eq!(setting(builder().lease(Duration::from_micros(10))), "lease");
        assert_eq!(setting(builder().lease(Duration::from_secs(7200))), "lease");
        assert_eq!(setting(builder().capabilities([])), "capabilities");
        let bad_url = Worker::builder("http://x", Tenant::new("acme").expect("valid"))
            .capabilities([Capability::new("search").expect("valid")])
            .build();
        assert!(matches!(bad_url, Err(ClientError::InvalidUrl { .. })));
    }

    #[test]
    fn failures_say_whether_to_retry() {
        assert!(TaskFailure::retryable("timeout").retryable);
        let permanent = TaskFailure::permanent("bad input");
        assert!(!permanent.retryable);
        assert_eq!(permanent.to_string(), "permanent failure: bad input");
    }
}
