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
    /// Largest accepted `POST /v1/events` body, in bytes (413 above it).
    #[arg(long = "max-body-bytes", env = "AGENTWIRE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest accepted WebSocket message, in bytes (close 1009 above it).
    #[arg(long = "max-frame-bytes", env = "AGENTWIRE_MAX_FRAME_BYTES", default_value_t = 1024 * 1024)]
    pub max_frame_bytes: usize,
    /// Live events buffered per session per gateway before a slow connection switches to
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
}

impl GatewayConfig {
    /// Checks every setting at start-up, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        self.valkey.validate()?;
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
        if self.heartbeat_secs == 0 || self.idle_timeout_secs <= self.heartbeat_secs {
            return Err("--idle-timeout-secs (AGENTWIRE_IDLE_TIMEOUT_SECS) must be above --heartbeat-secs (AGENTWIRE_HEARTBEAT_SECS), which must be above 0".into());
        }
        if !(1..=10_000).contains(&self.catch_up_page) {
            return Err(
                "--catch-up-page (AGENTWIRE_CATCH_UP_PAGE) must be between 1 and 10000".into(),
            );
        }
        Ok(())
    }
}
