//! The enricher: reads `agent.events`, embeds and labels event text with all-MiniLM-L6-v2
//! written in burn (wgpu on GPUs, burn-flex on the CPU), and publishes `agent.enriched`.
//!
//! Invariants:
//! - Its own consumer group: a slow or stopped enricher never delays realtime delivery.
//! - Offsets are stored only after every enrichment of a batch is acknowledged by Kafka; a
//!   crash re-enriches, and the relay delivers each source offset's annotation once per
//!   enrichment version (`Worker::version`: the model, the label set and its thresholds).
//! - Inference runs on its own thread, never on the async runtime.

pub mod bench;
pub mod config;
mod dedupe;
pub mod device;
pub mod embedder;
pub mod error;
pub mod golden;
pub mod labels;
mod metrics;
pub mod model;
mod pipeline;
pub mod tokenize;
mod trace;
mod worker;

pub use config::EnricherConfig;
pub use device::{Adapter, DeviceChoice};
pub use embedder::{DIM, Embedder, MODEL_ID, ModelFiles, cosine};
pub use error::{LabelError, ModelError};
pub use pipeline::{ENRICHMENT_JSON, run};

/// Why the enricher stopped.
#[derive(Debug, thiserror::Error)]
pub enum EnricherError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Labels(#[from] LabelError),
    #[error(transparent)]
    Kafka(#[from] agentwire_kafka::KafkaError),
    #[error("encode an enrichment: {0}")]
    Encode(String),
}
