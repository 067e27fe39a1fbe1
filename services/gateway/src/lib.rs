//! The gateway: the public HTTP and WebSocket API of agentwire.
//!
//! - Publishes (HTTP `POST /v1/events`, WebSocket `publish`) are appended to the Kafka log
//!   and acknowledged only after Kafka acknowledged them, with the record's partition and
//!   offset (`publish.rs`).
//! - Subscribers follow sessions over `/v1/ws`: history after their cursor from the Valkey
//!   window, then live events from the process's shared Valkey feed (`fanout/`), with the
//!   Kafka offset as the cursor everywhere (`session/`).
//!
//! The gateway holds no state that another instance needs: any number can run side by side.

pub mod auth;
pub mod config;
pub mod error;
mod events_api;
pub mod fanout;
mod health;
pub mod history;
mod idempotency;
mod metrics;
mod producers_api;
mod publish;
mod publish_trace;
pub mod registry;
pub mod routes;
pub mod serve;
pub mod session;
pub mod session_state;
mod state;
pub mod tasks;
mod tenant_limits;
mod ws;

use std::time::Duration;

use agentwire_kafka::EventLog;
use agentwire_valkey::HistoryStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;
pub use routes::{OPENAPI_JSON, app};
pub use state::AppState;

/// How long connections get to finish after shutdown was requested.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the log topic's partition count is trusted before it is fetched again: added
/// partitions reach the session-to-partition mapping and the cursor epochs within it.
const PARTITIONS_TTL: Duration = Duration::from_secs(10);

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] agentwire_kafka::KafkaError),
    #[error(transparent)]
    Valkey(#[from] agentwire_valkey::ValkeyError),
    #[error("the http server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves the API on `listener` until `shutdown` is cancelled, then closes WebSockets with
/// 1001, flushes the producer and returns.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    config.validate().map_err(GatewayError::Config)?;
    let auth = auth::Authenticator::new(&config.auth).map_err(GatewayError::Config)?;
    let tenant_connections = auth::TenantConnections::new(config.max_connections_per_tenant);
    // Install the recorder before the first metric is recorded, not at the first scrape.
    agentwire_runtime::metrics::handle();
    let log = EventLog::new(&config.kafka.settings(), &config.kafka.topic)?;
    let history = HistoryStore::connect(&config.valkey.url, config.valkey.history()).await?;
    let (fanout, feed) =
        fanout::Fanout::start(&config.valkey.url, history.clone(), shutdown.clone()).await?;
    let quota = agentwire_valkey::TenantQuota {
        per_second: config.tenant_publish_rate,
        burst: config.tenant_publish_burst,
    };
    let tenants = agentwire_valkey::TenantLimiter::new(history.connection(), quota);
    let partitions = agentwire_kafka::Partitions::new(
        &config.kafka.settings(),
        &config.kafka.topic,
        PARTITIONS_TTL,
    )?;
    let idempotency = idempotency::Idempotency::new(
        agentwire_valkey::ProducerStore::new(history.connection(), config.producer_settings()),
        config.kafka.settings(),
        partitions.clone(),
        config.kafka.topic.clone(),
        config.dedupe_rebuild_depth,
    );
    let scan = history::ScanLimits {
        per_read: config.log_scan_max_records,
        tenants: agentwire_valkey::TenantLimiter::log_scans(
            history.connection(),
            agentwire_valkey::TenantQuota {
                per_second: config.tenant_log_scan_rate,
                burst: config.tenant_log_scan_burst,
            },
        ),
        quota_timeout: Duration::from_millis(config.tenant_quota_timeout_ms),
    };
    let history = history::HistoryReader::new(
        history,
        config.kafka.settings(),
        partitions,
        config.kafka.topic.clone(),
        config.log_generation,
        config.page_max_bytes,
        scan,
    )?;
    agentwire_kafka::ensure_topic_like(
        &config.kafka.settings(),
        &config.kafka.topic,
        &config.kafka.tasks_topic,
    )
    .await?;
    let task_queue = tasks::TaskQueue::new(
        agentwire_valkey::TaskStore::new(
            agentwire_valkey::Connection::connect(&config.valkey.url).await?,
            Duration::from_secs(config.task_retention_secs),
            config.kafka.tasks_topic.clone(),
        ),
        EventLog::new(&config.kafka.settings(), &config.kafka.tasks_topic)?,
        log.clone(),
        tasks::wake::Wakeups::start(config.valkey.url.clone(), shutdown.clone()),
    );
    let sweeper = tokio::spawn(tasks::sweeper::run(
        task_queue.clone(),
        Duration::from_millis(config.task_sweep_ms),
        shutdown.clone(),
    ));
    let registry = registry::Registry::new(
        agentwire_valkey::RegistryStore::new(
            agentwire_valkey::Connection::connect(&config.valkey.url).await?,
            config.kafka.topic.clone(),
        ),
        log.clone(),
    );
    let registry_sweeper = tokio::spawn(registry::sweeper::run(
        registry.clone(),
        Duration::from_millis(config.registry_sweep_ms),
        shutdown.clone(),
    ));
    let session_states = session_state::SessionStates::new(
        agentwire_valkey::SessionStateStore::new(
            agentwire_valkey::Connection::connect(&config.valkey.url).await?,
        ),
        log.clone(),
    );
    let state = AppState::new(state::Parts {
        config,
        log: log.clone(),
        history,
        fanout,
        tenants,
        idempotency,
        auth,
        tenant_connections,
        tasks: task_queue,
        registry,
        session_states,
        shutdown: shutdown.clone(),
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, topic = %log.topic(), "gateway listening");
    }
    let limits = state.config().http_limits();
    serve::serve(listener, app(state.clone()), limits, shutdown.clone()).await;

    let connections = state.connections();
    connections.close();
    if tokio::time::timeout(DRAIN_DEADLINE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain deadline"
        );
    }
    if let Err(err) = log.flush(DRAIN_DEADLINE).await {
        tracing::warn!(error = %err, "producer flush at shutdown failed");
    }
    feed.abort();
    sweeper.abort();
    registry_sweeper.abort();
    tracing::info!("gateway stopped");
    Ok(())
}
