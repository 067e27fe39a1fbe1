//! The shared test stack: one Valkey and one Kafka-API broker that `cargo xtask test` starts
//! before `cargo test` and stops after it, handed to the tests through environment variables.

use crate::broker;

/// `redis://127.0.0.1:PORT` of the shared Valkey.
pub const VALKEY_URL_VAR: &str = "AGENTWIRE_TEST_VALKEY_URL";
/// `127.0.0.1:PORT` of the shared broker (a Kafka bootstrap list).
pub const KAFKA_BROKERS_VAR: &str = "AGENTWIRE_TEST_KAFKA_BROKERS";

const NO_STACK: &str =
    "no test stack: run the tests with `cargo xtask test` (it starts Valkey and the broker)";

/// Where the shared servers of this test run listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEnv {
    /// `redis://127.0.0.1:PORT`.
    pub valkey_url: String,
    /// `127.0.0.1:PORT`, ready for `bootstrap.servers`.
    pub kafka_brokers: String,
}

impl TestEnv {
    /// Reads `AGENTWIRE_TEST_VALKEY_URL` and `AGENTWIRE_TEST_KAFKA_BROKERS`.
    ///
    /// # Panics
    /// When either is missing or empty: an integration test must not pass without its
    /// servers.
    pub fn from_env() -> TestEnv {
        TestEnv {
            valkey_url: required(VALKEY_URL_VAR),
            kafka_brokers: required(KAFKA_BROKERS_VAR),
        }
    }

    /// Creates `topic` with `partitions` partitions on the shared broker (which does not
    /// create topics on first use). Name it with [`unique`](crate::unique).
    ///
    /// # Panics
    /// When the broker refuses, for instance because the topic exists.
    pub async fn create_topic(&self, topic: &str, partitions: u32) {
        broker::create_topic(&self.kafka_brokers, topic, partitions).await;
    }
}

fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!("{NO_STACK} ({var} is not set)"),
    }
}
