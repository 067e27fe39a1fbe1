//! A topic's partition count as a process sees it: fetched once, then refreshed when older
//! than its time to live, so partitions an operator adds reach the gateway's session-to-
//! partition mapping (and its cursor epochs) within that time instead of never. The producer
//! learns of them from librdkafka's own metadata refresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio::sync::Mutex;

use crate::config::KafkaSettings;
use crate::error::KafkaError;
use crate::reader::reader;

/// The partition count of one topic, shared by clones and refreshed every `ttl`.
#[derive(Clone)]
pub struct Partitions {
    /// One client for every refresh (a client per query costs threads and a connection).
    client: Arc<BaseConsumer>,
    topic: String,
    ttl: Duration,
    known: Arc<Mutex<Option<(usize, Instant)>>>,
}

impl std::fmt::Debug for Partitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitions")
            .field("topic", &self.topic)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Partitions {
    pub fn new(settings: &KafkaSettings, topic: &str, ttl: Duration) -> Result<Self, KafkaError> {
        Ok(Self {
            client: Arc::new(reader(settings)?),
            topic: topic.to_owned(),
            ttl,
            known: Arc::new(Mutex::new(None)),
        })
    }

    /// Asks the broker (0 partitions when it does not know the topic).
    async fn fetch(&self) -> Result<usize, KafkaError> {
        fetch_count(self.client.clone(), self.topic.clone()).await
    }

    /// The partition count (0 when the broker does not know the topic). A refresh that fails
    /// keeps the last known count, so a broker blip does not fail every request; with none
    /// known yet, the error is returned. Concurrent callers share one refresh.
    pub async fn count(&self) -> Result<usize, KafkaError> {
        let mut known = self.known.lock().await;
        if let Some((count, at)) = *known
            && at.elapsed() < self.ttl
        {
            return Ok(count);
        }
        match self.fetch().await {
            Ok(count) => {
                if let Some((before, _)) = *known
                    && before != count
                {
                    tracing::warn!(topic = %self.topic, before, now = count, "the log topic's partition count changed: session offsets change meaning (new cursor epochs)");
                }
                *known = Some((count, Instant::now()));
                Ok(count)
            }
            Err(err) => match *known {
                Some((count, _)) => {
                    tracing::warn!(topic = %self.topic, error = %err, "partition count refresh failed; keeping the last known count");
                    // Retried after another `ttl`, not by every caller meanwhile.
                    *known = Some((count, Instant::now()));
                    Ok(count)
                }
                None => Err(err),
            },
        }
    }
}

/// Asks the broker through `client` how many partitions `topic` has (0 when it does not know
/// the topic), off the async runtime (librdkafka's metadata call blocks).
pub(crate) async fn fetch_count(
    client: Arc<BaseConsumer>,
    topic: String,
) -> Result<usize, KafkaError> {
    tokio::task::spawn_blocking(move || {
        let metadata = client
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(KafkaError::Read)?;
        Ok(metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len()))
    })
    .await
    .map_err(|_| KafkaError::ConsumerStopped)?
}
