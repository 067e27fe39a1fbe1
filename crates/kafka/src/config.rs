//! Client settings shared by the producer, consumers and admin client.

use std::time::Duration;

use rdkafka::ClientConfig;

/// Where the brokers are and how long a produce may take.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Upper bound from enqueue to broker acknowledgement (`message.timeout.ms`); past it a
    /// publish fails with 503 instead of hanging.
    pub delivery_timeout: Duration,
    /// Producer batching delay (`linger.ms`); small, since agentwire is latency-first.
    pub linger: Duration,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            delivery_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(1),
        }
    }

    pub(crate) fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.keepalive.enable", "true")
            // Fail metadata lookups quickly when brokers are down, so errors surface.
            .set("socket.connection.setup.timeout.ms", "3000");
        config
    }
}

/// Consumer-group settings.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub group: String,
    pub topic: String,
    /// Largest batch handed to the downstream writer.
    pub batch_max: usize,
    /// After the first record of a batch, how long to wait for more before handing the batch
    /// on (dynamic batching: `batch_max` records or `batch_linger`, whichever comes first).
    /// Zero hands on whatever is already fetched.
    pub batch_linger: Duration,
    /// `fetch.wait.max.ms`: how long the broker may hold a Fetch. Small values keep latency
    /// low (an idle Fetch on nisshi sleeps about half of it). Not below what the broker needs
    /// to read a batch: nisshi's postgres engine returns one record per Fetch when it cannot
    /// (`docs/broker-notes.md`); its SQLite engine, the stack's, is fine at 4 ms.
    pub fetch_wait: Duration,
    /// `session.timeout.ms`: short so a restarted member rejoins quickly.
    pub session_timeout: Duration,
    /// librdkafka consumer properties set after all of the above, to try one setting at a
    /// time against a broker (the load tool's `broker` scenario); empty in the services.
    pub overrides: Vec<(String, String)>,
}

impl ConsumerSettings {
    pub fn new(group: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            topic: topic.into(),
            batch_max: 512,
            batch_linger: Duration::ZERO,
            fetch_wait: Duration::from_millis(4),
            session_timeout: Duration::from_secs(6),
            overrides: Vec::new(),
        }
    }
}
