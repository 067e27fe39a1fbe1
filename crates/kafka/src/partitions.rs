//! A topic's partition count as a process sees it: fetched once, then refreshed when older
//! than its time to live, so partitions an operator adds reach the gateway's session-to-
//! partition mapping (and its cursor epochs) within that time instead of never. The producer
//! learns of them from librdkafka's own metadata refresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::config::KafkaSettings;
use crate::error::KafkaError;
use crate::topics::partition_count;

/// The partition count of one topic, shared by clones and refreshed every `ttl`.
#[derive(Clone)]
pub struct Partitions {
    settings: KafkaSettings,
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
    pub fn new(settings: &KafkaSettings, topic: &str, ttl: Duration) -> Self {
        Self {
            settings: settings.clone(),
            topic: topic.to_owned(),
            ttl,
            known: Arc::new(Mutex::new(None)),
        }
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
        match partition_count(&self.settings, &self.topic).await {
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
