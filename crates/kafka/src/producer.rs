//! The durable event log's producer: idempotent (`enable.idempotence=true`, which implies
//! `acks=all`), keyed by session so one session keeps one order.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use agentwire_protocol::Offset;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use tokio::time::Instant;

#[cfg(doc)]
use crate::CLOUDEVENTS_JSON;
use crate::config::KafkaSettings;
use crate::error::KafkaError;
use crate::{CONTENT_TYPE_HEADER, TRACEPARENT_HEADER};

/// One record for a topic: in `agent.events` a CloudEvents JSON event in structured mode.
#[derive(Clone, Debug)]
pub struct LogRecord {
    /// `tenant:agent_type:session_id`.
    pub key: String,
    /// The record's JSON.
    pub value: String,
    /// The `content-type` header: [`CLOUDEVENTS_JSON`] for events.
    pub content_type: &'static str,
    pub traceparent: Option<String>,
}

/// Where Kafka stored a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub partition: i32,
    pub offset: Offset,
}

/// Appends events to the log topic.
///
/// After a delivery times out the producer is replaced by a fresh one (a new producer id)
/// instead of letting librdkafka bump the idempotent producer's epoch: records that timed
/// out were already failed back to their publishers, and tansu 0.6.0's SQLite storage
/// panics on the first produce with a bumped epoch, which would take the broker's storage
/// down for every client.
#[derive(Clone)]
pub struct EventLog {
    current: Arc<RwLock<Current>>,
    settings: KafkaSettings,
    topic: String,
    delivery_timeout: Duration,
}

struct Current {
    generation: u64,
    producer: FutureProducer,
}

fn create_producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    settings
        .base()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The Java client's partitioner, so `partition_for` (and any Kafka client) agrees.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", settings.linger.as_millis().to_string())
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        )
        .create()
        .map_err(KafkaError::Client)
}

/// Whether a delivery failure leaves the producer in a state worth replacing.
fn poisons_producer(err: &rdkafka::error::KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::UnknownProducerId
        )
    )
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    pub fn new(settings: &KafkaSettings, topic: impl Into<String>) -> Result<Self, KafkaError> {
        Ok(Self {
            current: Arc::new(RwLock::new(Current {
                generation: 0,
                producer: create_producer(settings)?,
            })),
            settings: settings.clone(),
            topic: topic.into(),
            delivery_timeout: settings.delivery_timeout,
        })
    }

    fn producer(&self) -> (u64, FutureProducer) {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        (current.generation, current.producer.clone())
    }

    /// Replaces the producer of `generation` (once, however many deliveries failed with it).
    fn renew(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.generation != generation {
            return;
        }
        match create_producer(&self.settings) {
            Ok(producer) => {
                tracing::warn!(
                    generation,
                    "kafka deliveries timed out; replacing the producer"
                );
                current.producer = producer;
                current.generation += 1;
            }
            Err(err) => tracing::warn!(error = %err, "cannot create a replacement kafka producer"),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Hands `record` to the producer now and returns the acknowledgement to await.
    ///
    /// Records enqueued by successive calls keep their order within their partition, so a
    /// caller that must preserve order (one WebSocket producer) enqueues in order and may
    /// await the acknowledgements concurrently. A full local queue is backpressure: this
    /// waits for room for at most the delivery timeout.
    pub async fn enqueue(
        &self,
        record: &LogRecord,
    ) -> Result<impl Future<Output = Result<Appended, KafkaError>> + Send + use<>, KafkaError> {
        let deadline = Instant::now() + self.delivery_timeout;
        let (generation, producer) = self.producer();
        loop {
            let mut headers = OwnedHeaders::new().insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some(record.content_type),
            });
            if let Some(tp) = &record.traceparent {
                headers = headers.insert(Header {
                    key: TRACEPARENT_HEADER,
                    value: Some(tp.as_str()),
                });
            }
            let kafka_record = FutureRecord::to(&self.topic)
                .key(record.key.as_str())
                .payload(record.value.as_str())
                .headers(headers);
            match producer.send_result(kafka_record) {
                Ok(delivery) => {
                    let log = self.clone();
                    return Ok(async move {
                        match delivery.await {
                            Ok(Ok(d)) => Ok(Appended {
                                partition: d.partition,
                                offset: Offset(u64::try_from(d.offset).unwrap_or_default()),
                            }),
                            Ok(Err((err, _))) => {
                                if poisons_producer(&err) {
                                    log.renew(generation);
                                }
                                Err(KafkaError::Delivery(err))
                            }
                            Err(_canceled) => {
                                Err(KafkaError::Delivery(rdkafka::error::KafkaError::Canceled))
                            }
                        }
                    });
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    if Instant::now() >= deadline {
                        return Err(KafkaError::QueueFull(self.delivery_timeout));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((err, _)) => return Err(KafkaError::Delivery(err)),
            }
        }
    }

    /// Appends one record and waits for Kafka's acknowledgement.
    pub async fn append(&self, record: &LogRecord) -> Result<Appended, KafkaError> {
        self.enqueue(record).await?.await
    }

    /// Checks that the brokers answer a metadata request for the log topic.
    pub async fn check_reachable(&self, timeout: Duration) -> Result<(), KafkaError> {
        let (_, producer) = self.producer();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(KafkaError::Read)?;
            match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                _ => Err(KafkaError::Admin(format!("topic {topic} does not exist"))),
            }
        })
        .await
        .map_err(|_| KafkaError::Timeout(timeout))?
    }

    /// Waits until every enqueued record is acknowledged or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let (_, producer) = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(timeout).map_err(KafkaError::Delivery))
            .await
            .map_err(|_| KafkaError::Timeout(timeout))?
    }
}
