//! What every handler and connection shares: the log producer, the history store, the hub,
//! the configuration and the process's shutdown token and task tracker.

use std::sync::Arc;

use agentwire_kafka::EventLog;
use agentwire_valkey::TenantLimiter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::history::HistoryReader;
use crate::hub::Hub;
use crate::label_feeds::LabelFeeds;

/// Cheap to clone; one per process.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GatewayConfig,
    log: EventLog,
    history: HistoryReader,
    hub: Hub,
    labels: LabelFeeds,
    tenants: TenantLimiter,
    shutdown: CancellationToken,
    connections: TaskTracker,
}

impl AppState {
    pub fn new(
        config: GatewayConfig,
        log: EventLog,
        history: HistoryReader,
        hub: Hub,
        labels: LabelFeeds,
        tenants: TenantLimiter,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                log,
                history,
                hub,
                labels,
                tenants,
                shutdown,
                connections: TaskTracker::new(),
            }),
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    pub fn log(&self) -> &EventLog {
        &self.inner.log
    }

    pub fn history(&self) -> &HistoryReader {
        &self.inner.history
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The label feeds (enrichment annotations routed by label).
    pub fn labels(&self) -> &LabelFeeds {
        &self.inner.labels
    }

    /// The per-tenant publish quota.
    pub fn tenants(&self) -> &TenantLimiter {
        &self.inner.tenants
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Tracks WebSocket connections, which outlive axum's graceful shutdown of HTTP.
    pub fn connections(&self) -> &TaskTracker {
        &self.inner.connections
    }
}
