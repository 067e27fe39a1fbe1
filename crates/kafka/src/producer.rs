//! The durable event log's producer: idempotent (`enable.idempotence=true`, which implies
//! `acks=all`), keyed by session so one session keeps one order.
//!
//! A failed delivery says whether the record may still be in the log: librdkafka knows
//! whether it was ever sent (its message persistence status), and a record that was sent but
//! not confirmed (a delivery timeout) may have been written. Callers must not tell a publisher
//! "nothing was written" in that case ([`KafkaError::may_have_been_written`]).

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use agentwire_protocol::Offset;
use rdkafka::ClientContext;
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;
use tokio::time::Instant;

#[cfg(doc)]
use crate::CLOUDEVENTS_JSON;
use crate::config::KafkaSettings;
use crate::error::KafkaError;
use crate::{CONTENT_TYPE_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER};

/// One record for a topic: in `agent.events` a CloudEvents JSON event in structured mode.
#[derive(Clone, Debug)]
pub struct LogRecord {
    /// `tenant:agent_type:session_id`.
    pub key: String,
    /// The record's JSON.
    pub value: String,
    /// The `content-type` header: [`CLOUDEVENTS_JSON`] for events.
    pub content_type: &'static str,
    /// The W3C trace context of the span that appends the record (message headers).
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Where Kafka stored a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub partition: i32,
    pub offset: Offset,
}

/// Producers replaced after a fatal error (once per producer, however many of its deliveries
/// failed); timeouts do not replace the producer.
pub const PRODUCER_REPLACEMENTS: &str = "agentwire_kafka_producer_replacements_total";

/// Appends events to the log topic.
///
/// One idempotent producer for the process. When deliveries time out, librdkafka bumps the
/// producer's epoch itself, after the requests in flight are settled, so the records that
/// follow keep their order in each partition. (A replacement producer, as with tansu 0.6.0,
/// which died on a bumped epoch, could land later records before earlier ones still in the
/// old producer's queue.) Only a fatal idempotence error, after which librdkafka refuses to
/// produce, replaces the producer.
#[derive(Clone)]
pub struct EventLog {
    current: Arc<RwLock<Current>>,
    settings: KafkaSettings,
    topic: String,
    delivery_timeout: Duration,
}

type Delivered = Result<Appended, KafkaError>;

/// Hands each delivery report to the publish waiting for it, with what librdkafka knows of
/// the record's fate.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<oneshot::Sender<Delivered>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let delivered = match result {
            Ok(message) => Ok(Appended {
                partition: message.partition(),
                offset: Offset(u64::try_from(message.offset()).unwrap_or_default()),
            }),
            Err((err, message)) if possibly_persisted(message) => {
                Err(KafkaError::Delivery(err.clone()))
            }
            Err((err, _)) => Err(KafkaError::NotWritten(err.clone())),
        };
        // The publish may have stopped waiting; its outcome is known all the same.
        let _ = reply.send(delivered);
    }
}

/// Whether a failed record may be in the log anyway: it was sent and no answer came back.
#[allow(unsafe_code)]
fn possibly_persisted(message: &BorrowedMessage<'_>) -> bool {
    // SAFETY: `message` is the live librdkafka message of the delivery report being handled,
    // valid for the callback; rd_kafka_message_status only reads its status.
    let status = unsafe { rdkafka::bindings::rd_kafka_message_status(message.ptr()) };
    status != rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED
}

type LogProducer = Arc<ThreadedProducer<Deliveries>>;

struct Current {
    generation: u64,
    producer: LogProducer,
}

fn create_producer(settings: &KafkaSettings) -> Result<LogProducer, KafkaError> {
    producer_config(settings)
        .create_with_context(Deliveries)
        .map(Arc::new)
        .map_err(KafkaError::Client)
}

/// The librdkafka configuration of agentwire's producer (for tools that drive a bare
/// producer with the same settings, such as the load tool's broker scenario).
pub fn producer_config(settings: &KafkaSettings) -> rdkafka::ClientConfig {
    let mut config = settings.base();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The Java client's partitioner, so `partition_for` (and any Kafka client) agrees.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", settings.linger.as_millis().to_string())
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        );
    config
}

impl KafkaError {
    /// Whether a delivery failure leaves the producer unable to produce (a fatal error of
    /// the idempotent producer); timeouts are not: librdkafka recovers from them itself.
    fn poisons_producer(&self) -> bool {
        let (KafkaError::Delivery(err) | KafkaError::NotWritten(err)) = self else {
            return false;
        };
        matches!(err.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal))
    }
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

    fn producer(&self) -> (u64, LogProducer) {
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
                    "the kafka producer hit a fatal error; replacing it"
                );
                metrics::counter!(PRODUCER_REPLACEMENTS).increment(1);
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
        let (mut generation, mut producer) = self.producer();
        let mut renewed = false;
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
                if let Some(ts) = &record.tracestate {
                    headers = headers.insert(Header {
                        key: TRACESTATE_HEADER,
                        value: Some(ts.as_str()),
                    });
                }
            }
            let (reply, delivered) = oneshot::channel();
            let kafka_record = BaseRecord::with_opaque_to(&self.topic, Box::new(reply))
                .key(record.key.as_str())
                .payload(record.value.as_str())
                .headers(headers);
            match producer.send(kafka_record) {
                Ok(()) => {
                    let log = self.clone();
                    return Ok(async move {
                        match delivered.await {
                            Ok(Ok(appended)) => Ok(appended),
                            Ok(Err(err)) => {
                                if err.poisons_producer() {
                                    log.renew(generation);
                                }
                                Err(err)
                            }
                            // The producer went away without a report: it may have sent it.
                            Err(_) => {
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
                // The producer went fatal with nothing in flight (e.g. its producer id was
                // fenced or forgotten by the broker, as when the topic is re-created): no
                // delivery report will ever renew it, so the refusal does, once per record.
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::Fatal),
                    _,
                )) if !renewed => {
                    self.renew(generation);
                    (generation, producer) = self.producer();
                    renewed = true;
                }
                Err((err, _)) => return Err(KafkaError::Refused(err)),
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
        tokio::task::spawn_blocking(move || producer.flush(timeout).map_err(KafkaError::Read))
            .await
            .map_err(|_| KafkaError::Timeout(timeout))?
    }
}
