//! Gateway configuration (flags and `AGENTWIRE_*` environment variables).

use agentwire_kafka::KafkaArgs;
use agentwire_valkey::ValkeyArgs;

/// Everything the gateway needs; defaults match the local stack (`cargo xtask up`).
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub valkey: ValkeyArgs,
    #[command(flatten)]
    pub auth: crate::auth::AuthArgs,
    /// The log's generation, part of every cursor epoch: bump it after the topic was deleted
    /// and re-created or restored in a way that renumbers offsets, so resuming clients learn
    /// their cursors no longer apply (`epoch_changed`).
    #[arg(
        long = "log-generation",
        env = "AGENTWIRE_LOG_GENERATION",
        default_value_t = 1
    )]
    pub log_generation: u64,
    /// WebSocket connections one tenant may hold on this gateway (429 `too_many_connections`
    /// before the upgrade above it). Counted only with authentication on.
    #[arg(
        long = "max-connections-per-tenant",
        env = "AGENTWIRE_MAX_CONNECTIONS_PER_TENANT",
        default_value_t = 10_000
    )]
    pub max_connections_per_tenant: usize,
    /// Ephemeral messages queued per connection; a connection further behind has
    /// the excess shed (counted in `agentwire_gateway_ephemeral_shed_total`).
    #[arg(
        long = "ephemeral-buffer",
        env = "AGENTWIRE_EPHEMERAL_BUFFER",
        default_value_t = 256
    )]
    pub ephemeral_buffer: usize,
    /// Largest accepted `POST /v1/events` body, in bytes (413 above it).
    #[arg(long = "max-body-bytes", env = "AGENTWIRE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a client may take to send a request head (and, on a keep-alive connection, to
    /// start its next request) before it is disconnected: the slowloris guard.
    #[arg(
        long = "http-header-timeout-secs",
        env = "AGENTWIRE_HTTP_HEADER_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub http_header_timeout_secs: u64,
    /// Seconds a client may take to send a whole request body (408 `request_timeout` after).
    #[arg(
        long = "http-body-timeout-secs",
        env = "AGENTWIRE_HTTP_BODY_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub http_body_timeout_secs: u64,
    /// HTTP connections open at once, WebSockets included; at the cap new connections wait
    /// in the kernel's backlog until one closes.
    #[arg(
        long = "max-http-connections",
        env = "AGENTWIRE_MAX_HTTP_CONNECTIONS",
        default_value_t = 20_000
    )]
    pub max_http_connections: usize,
    /// Milliseconds the inline per-tenant quota check may take; past it the publish is
    /// allowed (fail open, counted in `agentwire_gateway_tenant_limiter_errors_total`).
    #[arg(
        long = "tenant-quota-timeout-ms",
        env = "AGENTWIRE_TENANT_QUOTA_TIMEOUT_MS",
        default_value_t = 100
    )]
    pub tenant_quota_timeout_ms: u64,
    /// Largest accepted WebSocket message, in bytes (close 1009 above it).
    #[arg(long = "max-frame-bytes", env = "AGENTWIRE_MAX_FRAME_BYTES", default_value_t = 1024 * 1024)]
    pub max_frame_bytes: usize,
    /// Live events and annotations queued per connection before a slow connection switches to
    /// catch-up reads from history.
    #[arg(
        long = "session-buffer",
        env = "AGENTWIRE_SESSION_BUFFER",
        default_value_t = 1024
    )]
    pub session_buffer: usize,
    /// Sessions one WebSocket connection may follow at once.
    #[arg(
        long = "max-subscriptions",
        env = "AGENTWIRE_MAX_SUBSCRIPTIONS",
        default_value_t = 1000
    )]
    pub max_subscriptions: usize,
    /// Publishes per second one WebSocket connection may make (token bucket refill).
    #[arg(
        long = "ws-publish-rate",
        env = "AGENTWIRE_WS_PUBLISH_RATE",
        default_value_t = 1000
    )]
    pub ws_publish_rate: u32,
    /// Publishes one WebSocket connection may make at once (token bucket size).
    #[arg(
        long = "ws-publish-burst",
        env = "AGENTWIRE_WS_PUBLISH_BURST",
        default_value_t = 1000
    )]
    pub ws_publish_burst: u32,
    /// Inbound bytes per second one WebSocket connection may send.
    #[arg(long = "ws-bytes-rate", env = "AGENTWIRE_WS_BYTES_RATE", default_value_t = 4 * 1024 * 1024)]
    pub ws_bytes_rate: u32,
    /// Refused messages in a row after which a connection is closed with 1008.
    #[arg(
        long = "ws-abuse-strikes",
        env = "AGENTWIRE_WS_ABUSE_STRIKES",
        default_value_t = 100
    )]
    pub ws_abuse_strikes: u32,
    /// Events per second one tenant may publish, across every gateway (a GCRA bucket in Valkey).
    #[arg(
        long = "tenant-publish-rate",
        env = "AGENTWIRE_TENANT_PUBLISH_RATE",
        default_value_t = 10_000
    )]
    pub tenant_publish_rate: u32,
    /// Events one tenant may publish at once, across every gateway.
    #[arg(
        long = "tenant-publish-burst",
        env = "AGENTWIRE_TENANT_PUBLISH_BURST",
        default_value_t = 20_000
    )]
    pub tenant_publish_burst: u32,
    /// Seconds between the server's WebSocket pings.
    #[arg(
        long = "heartbeat-secs",
        env = "AGENTWIRE_HEARTBEAT_SECS",
        default_value_t = 15
    )]
    pub heartbeat_secs: u64,
    /// Seconds without any message from a client (pongs included) after which its connection
    /// is reaped; also the longest a single send to a client may take.
    #[arg(
        long = "idle-timeout-secs",
        env = "AGENTWIRE_IDLE_TIMEOUT_SECS",
        default_value_t = 45
    )]
    pub idle_timeout_secs: u64,
    /// Events read from history per catch-up page.
    #[arg(
        long = "catch-up-page",
        env = "AGENTWIRE_CATCH_UP_PAGE",
        default_value_t = 500
    )]
    pub catch_up_page: usize,
    /// Most bytes of event JSON in one page of history (a catch-up page or a `GET …/events`
    /// answer), besides the page's count limit. A page holds one event at least, however large.
    #[arg(long = "page-max-bytes", env = "AGENTWIRE_PAGE_MAX_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub page_max_bytes: usize,
    /// Most log records one history read examines (of any session) when the window cannot
    /// serve it; a page then ends early with `more` and a `next_after` past what was scanned.
    #[arg(
        long = "log-scan-max-records",
        env = "AGENTWIRE_LOG_SCAN_MAX_RECORDS",
        default_value_t = 50_000
    )]
    pub log_scan_max_records: usize,
    /// Log records per second one tenant's history reads may scan, across every gateway.
    #[arg(
        long = "tenant-log-scan-rate",
        env = "AGENTWIRE_TENANT_LOG_SCAN_RATE",
        default_value_t = 200_000
    )]
    pub tenant_log_scan_rate: u32,
    /// Log records one tenant's history reads may scan at once, across every gateway.
    #[arg(
        long = "tenant-log-scan-burst",
        env = "AGENTWIRE_TENANT_LOG_SCAN_BURST",
        default_value_t = 1_000_000
    )]
    pub tenant_log_scan_burst: u32,
    /// Acks kept per producer for duplicate answers (the dedupe window, in sequences).
    #[arg(
        long = "dedupe-window",
        env = "AGENTWIRE_DEDUPE_WINDOW",
        default_value_t = 256
    )]
    pub dedupe_window: u64,
    /// Seconds a producer's dedupe state outlives its last publish.
    #[arg(
        long = "dedupe-ttl-secs",
        env = "AGENTWIRE_DEDUPE_TTL_SECS",
        default_value_t = 86_400
    )]
    pub dedupe_ttl_secs: u64,
    /// Milliseconds after which an append whose gateway never recorded the outcome is taken
    /// over by a retry (which first looks for it in the log). Keep it above the producer's
    /// delivery timeout.
    #[arg(
        long = "dedupe-pending-stale-ms",
        env = "AGENTWIRE_DEDUPE_PENDING_STALE_MS",
        default_value_t = 60_000
    )]
    pub dedupe_pending_stale_ms: u64,
    /// Records per partition read back from the log to rebuild producer states after Valkey
    /// lost them, and to look for an abandoned append.
    #[arg(
        long = "dedupe-rebuild-depth",
        env = "AGENTWIRE_DEDUPE_REBUILD_DEPTH",
        default_value_t = 100_000
    )]
    pub dedupe_rebuild_depth: u64,
    /// Seconds a completed or cancelled task stays readable (`GET /v1/tasks/…`) and its
    /// idempotency key keeps naming it.
    #[arg(
        long = "task-retention-secs",
        env = "AGENTWIRE_TASK_RETENTION_SECS",
        default_value_t = 24 * 3600
    )]
    pub task_retention_secs: u64,
    /// Milliseconds between sweeps of expired leases and due retries.
    #[arg(
        long = "task-sweep-ms",
        env = "AGENTWIRE_TASK_SWEEP_MS",
        default_value_t = 500
    )]
    pub task_sweep_ms: u64,

    /// Milliseconds between sweeps of agent registrations whose TTL passed without a
    /// heartbeat (each expiry is recorded in the log within this much of it).
    #[arg(
        long = "registry-sweep-ms",
        env = "AGENTWIRE_REGISTRY_SWEEP_MS",
        default_value_t = 1000
    )]
    pub registry_sweep_ms: u64,
}

impl GatewayConfig {
    /// The token buckets of one WebSocket connection.
    /// What one WebSocket connection's session machine allows.
    pub fn session_settings(&self) -> crate::session::state::Settings {
        crate::session::state::Settings {
            max_subscriptions: self.max_subscriptions,
            max_frame_bytes: self.max_frame_bytes,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
            rates: self.rate_settings(),
        }
    }

    pub fn rate_settings(&self) -> crate::session::limits::RateSettings {
        crate::session::limits::RateSettings {
            publishes_per_sec: self.ws_publish_rate,
            publish_burst: self.ws_publish_burst,
            bytes_per_sec: self.ws_bytes_rate,
            bytes_burst: self
                .ws_bytes_rate
                .max(u32::try_from(self.max_frame_bytes).unwrap_or(u32::MAX)),
            max_strikes: self.ws_abuse_strikes,
        }
    }

    /// The HTTP server's limits.
    pub fn http_limits(&self) -> crate::serve::HttpLimits {
        crate::serve::HttpLimits {
            header_read_timeout: std::time::Duration::from_secs(self.http_header_timeout_secs),
            max_connections: self.max_http_connections,
        }
    }

    /// The producer dedupe state's size and lifetimes.
    pub fn producer_settings(&self) -> agentwire_valkey::ProducerSettings {
        agentwire_valkey::ProducerSettings {
            window: self.dedupe_window,
            ttl: std::time::Duration::from_secs(self.dedupe_ttl_secs),
            pending_stale: std::time::Duration::from_millis(self.dedupe_pending_stale_ms),
            // A produce request can be written at most this long after it was sent.
            unknown_settle: std::time::Duration::from_millis(self.kafka.delivery_timeout_ms),
        }
    }

    /// Checks every setting at start-up, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        self.valkey.validate()?;
        if self.task_retention_secs == 0 || self.task_sweep_ms == 0 || self.registry_sweep_ms == 0 {
            return Err(
                "--task-retention-secs (AGENTWIRE_TASK_RETENTION_SECS) --task-sweep-ms (AGENTWIRE_TASK_SWEEP_MS) and --registry-sweep-ms (AGENTWIRE_REGISTRY_SWEEP_MS) must be above 0"
                    .into(),
            );
        }
        if self.max_body_bytes < 1024 {
            return Err("--max-body-bytes (AGENTWIRE_MAX_BODY_BYTES) must be at least 1024".into());
        }
        if self.max_frame_bytes < 1024 {
            return Err(
                "--max-frame-bytes (AGENTWIRE_MAX_FRAME_BYTES) must be at least 1024".into(),
            );
        }
        if !(16..=1_000_000).contains(&self.session_buffer) {
            return Err(
                "--session-buffer (AGENTWIRE_SESSION_BUFFER) must be between 16 and 1000000".into(),
            );
        }
        if !(1..=100_000).contains(&self.max_subscriptions) {
            return Err(
                "--max-subscriptions (AGENTWIRE_MAX_SUBSCRIPTIONS) must be between 1 and 100000"
                    .into(),
            );
        }
        if self.ws_publish_rate == 0 || self.ws_bytes_rate == 0 || self.ws_abuse_strikes == 0 {
            return Err("--ws-publish-rate, --ws-bytes-rate and --ws-abuse-strikes (AGENTWIRE_WS_*) must be above 0".into());
        }
        if self.tenant_publish_rate == 0 || self.tenant_publish_burst == 0 {
            return Err("--tenant-publish-rate and --tenant-publish-burst (AGENTWIRE_TENANT_PUBLISH_*) must be above 0".into());
        }
        if self.heartbeat_secs == 0 || self.idle_timeout_secs <= self.heartbeat_secs {
            return Err("--idle-timeout-secs (AGENTWIRE_IDLE_TIMEOUT_SECS) must be above --heartbeat-secs (AGENTWIRE_HEARTBEAT_SECS), which must be above 0".into());
        }
        if !(1..=10_000).contains(&self.catch_up_page) {
            return Err(
                "--catch-up-page (AGENTWIRE_CATCH_UP_PAGE) must be between 1 and 10000".into(),
            );
        }
        if self.http_header_timeout_secs == 0
            || self.http_body_timeout_secs == 0
            || self.max_http_connections == 0
        {
            return Err("--http-header-timeout-secs, --http-body-timeout-secs and --max-http-connections (AGENTWIRE_HTTP_*, AGENTWIRE_MAX_HTTP_CONNECTIONS) must be above 0".into());
        }
        if !(1..=10_000).contains(&self.tenant_quota_timeout_ms) {
            return Err("--tenant-quota-timeout-ms (AGENTWIRE_TENANT_QUOTA_TIMEOUT_MS) must be between 1 and 10000".into());
        }
        if self.log_scan_max_records == 0
            || self.tenant_log_scan_rate == 0
            || self.tenant_log_scan_burst == 0
        {
            return Err("--log-scan-max-records and --tenant-log-scan-rate/-burst (AGENTWIRE_LOG_SCAN_MAX_RECORDS, AGENTWIRE_TENANT_LOG_SCAN_*) must be above 0".into());
        }
        if u64::try_from(self.log_scan_max_records).unwrap_or(u64::MAX)
            > u64::from(self.tenant_log_scan_burst)
        {
            return Err("--log-scan-max-records must not exceed --tenant-log-scan-burst (one read could never be allowed)".into());
        }
        if self.page_max_bytes < 1024 {
            return Err("--page-max-bytes (AGENTWIRE_PAGE_MAX_BYTES) must be at least 1024".into());
        }
        if self.max_connections_per_tenant == 0 {
            return Err("--max-connections-per-tenant (AGENTWIRE_MAX_CONNECTIONS_PER_TENANT) must be above 0".into());
        }
        if !(1..=1_000_000).contains(&self.ephemeral_buffer) {
            return Err(
                "--ephemeral-buffer (AGENTWIRE_EPHEMERAL_BUFFER) must be between 1 and 1000000"
                    .into(),
            );
        }
        if !(1..=100_000).contains(&self.dedupe_window) {
            return Err(
                "--dedupe-window (AGENTWIRE_DEDUPE_WINDOW) must be between 1 and 100000".into(),
            );
        }
        if self.dedupe_ttl_secs == 0
            || self.dedupe_pending_stale_ms == 0
            || self.dedupe_rebuild_depth == 0
        {
            return Err("--dedupe-ttl-secs, --dedupe-pending-stale-ms and --dedupe-rebuild-depth (AGENTWIRE_DEDUPE_*) must be above 0".into());
        }
        Ok(())
    }
}
