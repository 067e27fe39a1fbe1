//! What every handler and connection shares: the log producer, the history store, the fanout,
//! the configuration and the process's shutdown token and task tracker.

use std::sync::Arc;

use agentwire_kafka::EventLog;
use agentwire_valkey::TenantLimiter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, TenantConnections};
use crate::config::GatewayConfig;
use crate::fanout::Fanout;
use crate::history::HistoryReader;
use crate::idempotency::Idempotency;
use crate::registry::Registry;
use crate::session_state::SessionStates;
use crate::tasks::TaskQueue;

/// Cheap to clone; one per process.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// Everything a gateway process shares, built once at start-up.
#[derive(Debug)]
pub struct Parts {
    pub config: GatewayConfig,
    pub log: EventLog,
    pub history: HistoryReader,
    pub fanout: Fanout,
    pub tenants: TenantLimiter,
    pub idempotency: Idempotency,
    pub auth: Authenticator,
    pub tenant_connections: TenantConnections,
    pub tasks: TaskQueue,
    pub registry: Registry,
    pub session_states: SessionStates,
    pub shutdown: CancellationToken,
}

#[derive(Debug)]
struct Inner {
    parts: Parts,
    connections: TaskTracker,
    readiness: crate::health::ReadinessCache,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                parts,
                connections: TaskTracker::new(),
                readiness: crate::health::ReadinessCache::default(),
            }),
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.parts.config
    }

    pub fn log(&self) -> &EventLog {
        &self.inner.parts.log
    }

    pub fn history(&self) -> &HistoryReader {
        &self.inner.parts.history
    }

    /// Live channels (sessions and label feeds) shared by this process's connections.
    pub fn fanout(&self) -> &Fanout {
        &self.inner.parts.fanout
    }

    /// The per-tenant publish quota.
    pub fn tenants(&self) -> &TenantLimiter {
        &self.inner.parts.tenants
    }

    /// Producer sequence deduplication.
    pub fn idempotency(&self) -> &Idempotency {
        &self.inner.parts.idempotency
    }

    /// Token verification and the Origin allow-list.
    pub fn auth(&self) -> &Authenticator {
        &self.inner.parts.auth
    }

    /// WebSocket connections per tenant.
    pub fn tenant_connections(&self) -> &TenantConnections {
        &self.inner.parts.tenant_connections
    }

    /// The work queues.
    pub fn tasks(&self) -> &TaskQueue {
        &self.inner.parts.tasks
    }

    /// The agent registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.parts.registry
    }

    /// Sessions' shared state.
    pub fn session_states(&self) -> &SessionStates {
        &self.inner.parts.session_states
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.parts.shutdown
    }

    /// The latest `/readyz` answer.
    pub(crate) fn readiness(&self) -> &crate::health::ReadinessCache {
        &self.inner.readiness
    }

    /// Tracks WebSocket connections, which outlive axum's graceful shutdown of HTTP.
    pub fn connections(&self) -> &TaskTracker {
        &self.inner.connections
    }
}
