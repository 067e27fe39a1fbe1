//! The consumer poll loop: a dedicated thread polls Kafka, groups records into bounded
//! batches and hands them, with rebalance notices, to async code over a bounded channel.
//! A full channel blocks the poll thread: backpressure reaches Kafka, never memory.
//!
//! Offsets are stored only by the downstream writer ([`OffsetStore::store`]) after its write
//! succeeded (`enable.auto.offset.store=false`), and auto-committed from there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agentwire_protocol::Offset;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::message::Headers as _;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ConsumerSettings, KafkaSettings};
use crate::error::KafkaError;
use crate::{TRACEPARENT_HEADER, TRACESTATE_HEADER};

/// One record read from the log.
#[derive(Clone, Debug)]
pub struct LogMessage {
    pub partition: i32,
    /// The record's own offset (inclusive).
    pub offset: Offset,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The W3C trace context of the span that appended the record (message headers).
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// The record's timestamp (the producer's create time), in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl LogMessage {
    pub(crate) fn from_kafka_message(message: &impl rdkafka::message::Message) -> Self {
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_owned)
            })
        };
        Self {
            partition: message.partition(),
            offset: Offset(u64::try_from(message.offset()).unwrap_or_default()),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            traceparent: header(TRACEPARENT_HEADER),
            tracestate: header(TRACESTATE_HEADER),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }
}

/// What the poll loop reports.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// Records in partition order (records of one partition keep their relative order).
    Batch(Vec<LogMessage>),
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

struct RebalanceContext {
    events: mpsc::Sender<ConsumerEvent>,
    group: String,
}

/// Records behind the end of the log, per consumer group, topic and partition (from
/// librdkafka's statistics: the partition's high watermark less the group's committed offset).
pub const CONSUMER_LAG: &str = "agentwire_kafka_consumer_lag";

/// How often librdkafka reports the statistics the lag gauge is read from.
const STATISTICS_INTERVAL: &str = "5000";

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in t.partitions.iter().filter(|(id, _)| **id >= 0) {
                // -1 until the partition is assigned and both ends are known.
                if p.consumer_lag >= 0 {
                    metrics::gauge!(
                        CONSUMER_LAG,
                        "group" => self.group.clone(),
                        "topic" => topic.clone(),
                        "partition" => partition.to_string(),
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Runs on the poll thread, never on the async runtime.
            let _ = self
                .events
                .blocking_send(ConsumerEvent::Revoked(partitions(tpl)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let _ = self
                    .events
                    .blocking_send(ConsumerEvent::Assigned(partitions(tpl)));
            }
            Rebalance::Error(err) => tracing::warn!(error = %err, "kafka rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

type Inner = BaseConsumer<RebalanceContext>;

/// Owns the consumer and destroys it on a thread of its own: librdkafka's group close can
/// block without bound (seen against tansu 0.6.0), and whoever drops the last handle (an
/// async task, a test at its end) must never hang on it. Offsets were committed before.
struct Closing(Option<Inner>);

impl std::ops::Deref for Closing {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        // Only `drop` takes the consumer out.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("the consumer is gone only after drop"))
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            let spawned = std::thread::Builder::new()
                .name("kafka-close".into())
                .spawn(move || drop(consumer));
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "cannot start the consumer close thread; leaking the consumer");
            }
        }
    }
}

/// Stores processed offsets for the next (auto) commit.
#[derive(Clone)]
pub struct OffsetStore {
    consumer: Arc<Closing>,
    topic: String,
}

impl std::fmt::Debug for OffsetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetStore")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl OffsetStore {
    /// Marks `offset` (inclusive) and everything before it in `partition` as processed.
    /// Fails harmlessly for a partition no longer assigned: its new owner re-processes.
    pub fn store(&self, partition: i32, offset: Offset) -> Result<(), KafkaError> {
        let offset = i64::try_from(offset.0).unwrap_or(i64::MAX);
        self.consumer
            .store_offset(&self.topic, partition, offset)
            .map_err(KafkaError::Read)
    }

    /// Stores, for each partition in `batch`, its highest offset: the whole batch is done.
    /// Returns what was stored (partitions no longer assigned are skipped, see [`Self::store`]).
    pub fn store_batch(&self, batch: &[LogMessage]) -> BTreeMap<i32, Offset> {
        let mut highest: BTreeMap<i32, Offset> = BTreeMap::new();
        for message in batch {
            let entry = highest.entry(message.partition).or_insert(message.offset);
            *entry = (*entry).max(message.offset);
        }
        for (&partition, &offset) in &highest {
            if let Err(err) = self.store(partition, offset) {
                tracing::debug!(partition, error = %err, "offset not stored (partition revoked?)");
            }
        }
        highest
    }

    /// Commits stored offsets now and waits for the broker (used at shutdown).
    pub fn commit_sync(&self) -> Result<(), KafkaError> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(())
            | Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => Ok(()),
            Err(err) => Err(KafkaError::Read(err)),
        }
    }
}

/// The running poll thread.
#[derive(Debug)]
pub struct LogConsumer {
    thread: JoinHandle<()>,
}

impl LogConsumer {
    /// Subscribes `settings.group` to `settings.topic` and starts polling on a new thread.
    /// The thread stops when `shutdown` is cancelled; the channel closes after it.
    pub fn start(
        kafka: &KafkaSettings,
        settings: &ConsumerSettings,
        events: mpsc::Sender<ConsumerEvent>,
        shutdown: CancellationToken,
    ) -> Result<(Self, OffsetStore), KafkaError> {
        let context = RebalanceContext {
            events: events.clone(),
            group: settings.group.clone(),
        };
        let mut config = kafka.base();
        config
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", STATISTICS_INTERVAL)
            .set(
                "fetch.wait.max.ms",
                settings.fetch_wait.as_millis().to_string(),
            )
            .set(
                "session.timeout.ms",
                settings.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (settings.session_timeout.as_millis() / 3).to_string(),
            );
        for (key, value) in &settings.overrides {
            config.set(key, value);
        }
        let consumer: Inner = config
            .create_with_context(context)
            .map_err(KafkaError::Client)?;
        consumer
            .subscribe(&[&settings.topic])
            .map_err(KafkaError::Client)?;
        let consumer = Arc::new(Closing(Some(consumer)));
        let store = OffsetStore {
            consumer: consumer.clone(),
            topic: settings.topic.clone(),
        };
        let batching = Batching {
            max: settings.batch_max.max(1),
            linger: settings.batch_linger,
        };
        let thread = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || poll_loop(&consumer, batching, &events, &shutdown))
            .map_err(|e| KafkaError::Admin(format!("cannot start the poll thread: {e}")))?;
        Ok((Self { thread }, store))
    }

    /// Waits for the poll thread to finish (after the shutdown token was cancelled).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

#[derive(Clone, Copy)]
struct Batching {
    max: usize,
    linger: Duration,
}

fn poll_loop(
    consumer: &Inner,
    batching: Batching,
    events: &mpsc::Sender<ConsumerEvent>,
    shutdown: &CancellationToken,
) {
    const POLL: Duration = Duration::from_millis(50);
    while !shutdown.is_cancelled() {
        let mut batch = Vec::new();
        let mut timeout = POLL;
        let mut deadline = None;
        while batch.len() < batching.max {
            match consumer.poll(timeout) {
                Some(Ok(message)) => batch.push(LogMessage::from_kafka_message(&message)),
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "kafka poll error");
                    break;
                }
                None => break,
            }
            // After the first record, wait only until the batch's linger runs out.
            let until = *deadline.get_or_insert_with(|| Instant::now() + batching.linger);
            timeout = until.saturating_duration_since(Instant::now());
        }
        if !batch.is_empty() && events.blocking_send(ConsumerEvent::Batch(batch)).is_err() {
            return;
        }
    }
}
