//! Reading a partition range directly (no consumer group): replays, audits and tests.

use std::time::{Duration, Instant};

use agentwire_protocol::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::consumer::LogMessage;
use crate::error::KafkaError;

pub(crate) fn reader(settings: &KafkaSettings) -> Result<BaseConsumer, KafkaError> {
    settings
        .base()
        .set("group.id", "agentwire-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // A start below the log's first offset reads from the first one instead of the end.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "4")
        .create()
        .map_err(KafkaError::Client)
}

/// One Kafka client for watermark queries, shared by every caller of a process: creating a
/// client per query costs threads and a broker connection each, which thousands of
/// subscriptions at once would multiply.
#[derive(Clone)]
pub struct Watermarks {
    consumer: std::sync::Arc<BaseConsumer>,
}

impl std::fmt::Debug for Watermarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watermarks").finish_non_exhaustive()
    }
}

impl Watermarks {
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            consumer: std::sync::Arc::new(reader(settings)?),
        })
    }

    /// The low (first) and high (next to be written) offsets of a partition.
    pub async fn get(&self, topic: &str, partition: i32) -> Result<(i64, i64), KafkaError> {
        let (consumer, topic) = (self.consumer.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                .map_err(KafkaError::Read)
        })
        .await
        .map_err(|_| KafkaError::ConsumerStopped)?
    }
}

/// The low (first) and high (next to be written) offsets of a partition, with a client of
/// its own (for one-off queries; see [`Watermarks`] for repeated ones).
pub async fn watermarks(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    Watermarks::new(settings)?.get(topic, partition).await
}

/// Reads the records of `partition` with offsets in `[from, until)` (`until` exclusive),
/// giving up after `timeout`.
pub async fn read_range(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: Offset,
    until: Offset,
    timeout: Duration,
) -> Result<Vec<LogMessage>, KafkaError> {
    let consumer = reader(settings)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        let start = i64::try_from(from.0).unwrap_or(i64::MAX);
        tpl.add_partition_offset(&topic, partition, KafkaOffset::Offset(start))
            .map_err(KafkaError::Read)?;
        consumer.assign(&tpl).map_err(KafkaError::Read)?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut next = from.0;
        while next < until.0 {
            if Instant::now() >= deadline {
                return Err(KafkaError::Timeout(timeout));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let message = LogMessage::from_kafka_message(&message);
                    next = message.offset.0 + 1;
                    if message.offset < until {
                        out.push(message);
                    }
                }
                Some(Err(err)) => return Err(KafkaError::Read(err)),
                None => {}
            }
        }
        Ok(out)
    })
    .await
    .map_err(|_| KafkaError::ConsumerStopped)?
}
