//! Enricher configuration (flags and `AGENTWIRE_*` environment variables).

use std::path::PathBuf;
use std::time::Duration;

use agentwire_kafka::{ConsumerSettings, KafkaArgs};

use crate::device::DeviceChoice;

/// Everything the enricher needs; defaults match the local stack (`cargo xtask up`).
#[derive(Clone, Debug, clap::Args)]
pub struct EnricherConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic the enrichments are written to.
    #[arg(
        long = "enriched-topic",
        env = "AGENTWIRE_ENRICHED_TOPIC",
        default_value = "agent.enriched"
    )]
    pub enriched_topic: String,
    /// Kafka consumer group of the enrichers (separate from the relay's).
    #[arg(
        long = "enricher-group",
        env = "AGENTWIRE_ENRICHER_GROUP",
        default_value = "agentwire-enricher"
    )]
    pub group: String,
    /// Where inference runs: a hardware GPU when there is one (auto), wgpu on any adapter
    /// (gpu), or the CPU backend (cpu).
    #[arg(long, env = "AGENTWIRE_ENRICHER_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// Largest inference batch (events).
    #[arg(long, env = "AGENTWIRE_ENRICHER_BATCH_MAX", default_value_t = 32)]
    pub batch_max: usize,
    /// Longest wait for a batch to fill after its first event, in milliseconds.
    #[arg(long, env = "AGENTWIRE_ENRICHER_BATCH_WAIT_MS", default_value_t = 20)]
    pub batch_wait_ms: u64,
    /// The model folder (`model.safetensors`, `tokenizer.json`); default: the one
    /// `cargo xtask deps` fills under `~/.cache/agentwire`.
    #[arg(long, env = "AGENTWIRE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// The label set (TOML; see `infra/labels.toml`).
    #[arg(
        long,
        env = "AGENTWIRE_ENRICHER_LABELS",
        default_value = "infra/labels.toml"
    )]
    pub labels: PathBuf,
    /// Lowest cosine score for a label to be reported.
    #[arg(long, env = "AGENTWIRE_ENRICHER_MIN_SCORE", default_value_t = 0.25)]
    pub min_score: f32,
    /// Most labels reported per event.
    #[arg(long, env = "AGENTWIRE_ENRICHER_TOP_K", default_value_t = 3)]
    pub top_k: usize,
    /// Cosine at or above which an event is a near duplicate of an earlier one of its session.
    #[arg(
        long,
        env = "AGENTWIRE_ENRICHER_DUPLICATE_THRESHOLD",
        default_value_t = 0.95
    )]
    pub duplicate_threshold: f32,
    /// Recent embeddings remembered per session for near-duplicate detection.
    #[arg(
        long,
        env = "AGENTWIRE_ENRICHER_DUPLICATE_WINDOW",
        default_value_t = 64
    )]
    pub duplicate_window: usize,
    /// Sessions remembered (least recently used forgotten first).
    #[arg(long, env = "AGENTWIRE_ENRICHER_SESSIONS", default_value_t = 10_000)]
    pub sessions: usize,
    /// `fetch.wait.max.ms` of the enricher's consumer.
    #[arg(
        long = "kafka-fetch-wait-ms",
        env = "AGENTWIRE_KAFKA_FETCH_WAIT_MS",
        default_value_t = 4
    )]
    pub fetch_wait_ms: u64,
}

impl EnricherConfig {
    /// Checks every setting at start-up, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        if self.enriched_topic.is_empty() || self.enriched_topic == self.kafka.topic {
            return Err(
                "--enriched-topic (AGENTWIRE_ENRICHED_TOPIC) must be set and differ from --topic"
                    .into(),
            );
        }
        if self.group.is_empty() {
            return Err("--enricher-group (AGENTWIRE_ENRICHER_GROUP) must not be empty".into());
        }
        if !(1..=1024).contains(&self.batch_max) {
            return Err("--batch-max (AGENTWIRE_ENRICHER_BATCH_MAX) must be 1..=1024".into());
        }
        if self.batch_wait_ms > 10_000 {
            return Err(
                "--batch-wait-ms (AGENTWIRE_ENRICHER_BATCH_WAIT_MS) must be ≤ 10000".into(),
            );
        }
        if !(-1.0..=1.0).contains(&self.min_score) {
            return Err("--min-score (AGENTWIRE_ENRICHER_MIN_SCORE) must be in -1..=1".into());
        }
        if self.top_k == 0 {
            return Err("--top-k (AGENTWIRE_ENRICHER_TOP_K) must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.duplicate_threshold) {
            return Err(
                "--duplicate-threshold (AGENTWIRE_ENRICHER_DUPLICATE_THRESHOLD) must be in 0..=1"
                    .into(),
            );
        }
        if self.duplicate_window == 0 || self.sessions == 0 {
            return Err("--duplicate-window and --sessions must be at least 1".into());
        }
        if !(1..=500).contains(&self.fetch_wait_ms) {
            return Err(
                "--kafka-fetch-wait-ms (AGENTWIRE_KAFKA_FETCH_WAIT_MS) must be between 1 and 500"
                    .into(),
            );
        }
        Ok(())
    }

    pub(crate) fn consumer(&self) -> ConsumerSettings {
        ConsumerSettings {
            batch_max: self.batch_max,
            batch_linger: Duration::from_millis(self.batch_wait_ms),
            fetch_wait: Duration::from_millis(self.fetch_wait_ms),
            ..ConsumerSettings::new(&self.group, &self.kafka.topic)
        }
    }
}
