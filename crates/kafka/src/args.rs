//! Command-line / environment configuration of the Kafka connection, shared by every
//! service (`#[command(flatten)]`).

use std::time::Duration;

use crate::config::KafkaSettings;

/// Where the log lives.
#[derive(Clone, Debug, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port`.
    #[arg(
        long = "kafka-brokers",
        env = "AGENTWIRE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// The event log topic.
    #[arg(
        long = "topic",
        env = "AGENTWIRE_TOPIC",
        default_value = "agent.events"
    )]
    pub topic: String,
    /// The work-queue topic: every task transition (`agent.task.*`), keyed by task.
    #[arg(
        long = "tasks-topic",
        env = "AGENTWIRE_TASKS_TOPIC",
        default_value = "agent.tasks"
    )]
    pub tasks_topic: String,
    /// Longest wait for Kafka to acknowledge a publish before it fails with 503.
    #[arg(
        long = "kafka-delivery-timeout-ms",
        env = "AGENTWIRE_KAFKA_DELIVERY_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub delivery_timeout_ms: u64,
    /// Producer batching delay (`linger.ms`).
    #[arg(
        long = "kafka-linger-ms",
        env = "AGENTWIRE_KAFKA_LINGER_MS",
        default_value_t = 1
    )]
    pub linger_ms: u64,
}

impl KafkaArgs {
    /// Checks the values; the message names the flag and its environment variable.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.split(',').any(|b| {
            b.trim()
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err(format!(
                "--kafka-brokers (AGENTWIRE_KAFKA_BROKERS) must be comma-separated host:port, got {:?}",
                self.brokers
            ));
        }
        let topic_ok = !self.topic.is_empty()
            && self.topic.len() <= 249
            && self
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !topic_ok {
            return Err(format!(
                "--topic (AGENTWIRE_TOPIC) is not a valid Kafka topic name: {:?}",
                self.topic
            ));
        }
        if self.delivery_timeout_ms == 0 {
            return Err(
                "--kafka-delivery-timeout-ms (AGENTWIRE_KAFKA_DELIVERY_TIMEOUT_MS) must be above 0"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.brokers.clone(),
            delivery_timeout: Duration::from_millis(self.delivery_timeout_ms),
            linger: Duration::from_millis(self.linger_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(brokers: &str, topic: &str) -> KafkaArgs {
        KafkaArgs {
            brokers: brokers.into(),
            topic: topic.into(),
            tasks_topic: "agent.tasks".into(),
            delivery_timeout_ms: 5000,
            linger_ms: 1,
        }
    }

    #[test]
    fn validation_names_the_bad_setting() {
        assert!(
            args("127.0.0.1:9092,host:1", "agent.events")
                .validate()
                .is_ok()
        );
        assert!(
            args("127.0.0.1", "agent.events")
                .validate()
                .expect_err("no port")
                .contains("AGENTWIRE_KAFKA_BROKERS")
        );
        assert!(args("h:99999", "agent.events").validate().is_err());
        assert!(
            args("h:1", "bad topic")
                .validate()
                .expect_err("topic")
                .contains("AGENTWIRE_TOPIC")
        );
    }
}
