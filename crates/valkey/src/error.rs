//! Errors of the Valkey adapter.

/// A Valkey operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ValkeyError {
    #[error("valkey request failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("valkey returned an unexpected reply: {0}")]
    Reply(String),
    #[error("invalid valkey configuration: {0}")]
    Config(String),
    #[error("the valkey subscription connection is closed")]
    SubscriptionClosed,
}
