//! Relay configuration (flags and `AGENTWIRE_*` environment variables).

use std::time::Duration;

use agentwire_kafka::{ConsumerSettings, KafkaArgs};
use agentwire_valkey::ValkeyArgs;

/// Everything the relay needs; defaults match the local stack (`cargo xtask up`).
#[derive(Clone, Debug, clap::Args)]
pub struct RelayConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub valkey: ValkeyArgs,
    /// Kafka consumer group of the relays.
    #[arg(
        long = "relay-group",
        env = "AGENTWIRE_RELAY_GROUP",
        default_value = "agentwire-relay"
    )]
    pub group: String,
    /// Largest batch written to Valkey in one pipeline.
    #[arg(
        long = "relay-batch-max",
        env = "AGENTWIRE_RELAY_BATCH_MAX",
        default_value_t = 512
    )]
    pub batch_max: usize,
    /// The enricher's topic, carried into Valkey as `enriched` annotations.
    #[arg(
        long = "enriched-topic",
        env = "AGENTWIRE_ENRICHED_TOPIC",
        default_value = "agent.enriched"
    )]
    pub enriched_topic: String,
    /// Kafka consumer group of the relays' enrichment carriers.
    #[arg(
        long = "relay-enriched-group",
        env = "AGENTWIRE_RELAY_ENRICHED_GROUP",
        default_value = "agentwire-relay-enriched"
    )]
    pub enriched_group: String,
    /// Kafka consumer group of the relays' task carriers (`agent.tasks` into the queues).
    #[arg(
        long = "relay-tasks-group",
        env = "AGENTWIRE_RELAY_TASKS_GROUP",
        default_value = "agentwire-relay-tasks"
    )]
    pub tasks_group: String,
    /// Seconds a completed or cancelled task stays readable after the carrier applied it.
    #[arg(
        long = "task-retention-secs",
        env = "AGENTWIRE_TASK_RETENTION_SECS",
        default_value_t = 24 * 3600
    )]
    pub task_retention_secs: u64,
    /// `fetch.wait.max.ms` of the relay's consumer.
    #[arg(
        long = "kafka-fetch-wait-ms",
        env = "AGENTWIRE_KAFKA_FETCH_WAIT_MS",
        default_value_t = 4
    )]
    pub fetch_wait_ms: u64,
}

impl RelayConfig {
    /// Checks every setting at start-up, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        self.valkey.validate()?;
        if self.task_retention_secs == 0 {
            return Err(
                "--task-retention-secs (AGENTWIRE_TASK_RETENTION_SECS) must be above 0".into(),
            );
        }
        if self.tasks_group.is_empty() || self.tasks_group == self.group {
            return Err("--relay-tasks-group must be set and differ from --relay-group".into());
        }
        if self.group.is_empty() {
            return Err("--relay-group (AGENTWIRE_RELAY_GROUP) must not be empty".into());
        }
        if self.enriched_topic.is_empty() || self.enriched_topic == self.kafka.topic {
            return Err(
                "--enriched-topic (AGENTWIRE_ENRICHED_TOPIC) must be set and differ from --topic"
                    .into(),
            );
        }
        if self.enriched_group.is_empty() || self.enriched_group == self.group {
            return Err("--relay-enriched-group must be set and differ from --relay-group".into());
        }
        if !(1..=10_000).contains(&self.batch_max) {
            return Err(
                "--relay-batch-max (AGENTWIRE_RELAY_BATCH_MAX) must be between 1 and 10000".into(),
            );
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
            fetch_wait: Duration::from_millis(self.fetch_wait_ms),
            ..ConsumerSettings::new(&self.group, &self.kafka.topic)
        }
    }

    pub(crate) fn enriched_consumer(&self) -> ConsumerSettings {
        ConsumerSettings {
            batch_max: self.batch_max,
            fetch_wait: Duration::from_millis(self.fetch_wait_ms),
            ..ConsumerSettings::new(&self.enriched_group, &self.enriched_topic)
        }
    }
}
