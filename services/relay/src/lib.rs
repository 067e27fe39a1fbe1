//! The relay: Kafka `agent.events` → Valkey. It reads the log in partition order (consumer
//! group `agentwire-relay`), appends each event to its session's history window and
//! announces it to live subscribers in one atomic server-side step, in pipelined batches.
//!
//! Invariants:
//! - Offsets are stored only after the Valkey write succeeded, so nothing read is skipped.
//! - Writing an offset twice is a no-op (no second announcement): the relay can be killed
//!   and restarted at any point, and any number of relays can share the partitions.
//! - A Valkey outage stalls the relay (retrying with backoff); it never drops a durable event.
//! - A log reset under the relay (the topic re-created) stops it with an error instead of
//!   mixing two logs in one window (`log_watch.rs`).

pub mod config;
mod enriched;
mod log_watch;
mod metrics;
mod pipeline;
mod states;
mod tasks;
mod trace;

pub use config::RelayConfig;
pub use log_watch::LogReset;
pub use pipeline::run;

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] agentwire_kafka::KafkaError),
    #[error(transparent)]
    Valkey(#[from] agentwire_valkey::ValkeyError),
    /// The log topic was reset (deleted and re-created) under this Valkey.
    #[error(
        "the log was reset under this Valkey (partition {}: {}): its windows, marks and the relay group's offsets belong to the old log; \
         see docs/ARCHITECTURE.md, \"Re-creating the log topic\"",
        .0.partition, .0.found
    )]
    LogReset(log_watch::LogReset),
}
