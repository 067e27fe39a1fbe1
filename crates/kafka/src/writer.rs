//! Writing records exactly as given (key, value, headers, timestamp): copies of a range into
//! another topic and drill imports. Agentwire's producer settings (idempotent, `acks=all`,
//! the murmur2 partitioner), with many records in flight and every one confirmed.

use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaSettings;
use crate::error::KafkaError;
use crate::producer::producer_config;
use crate::scan::ScannedRecord;

/// Records awaiting their acknowledgement before `write` waits for one.
const IN_FLIGHT: usize = 10_000;

/// Writes records to one topic and waits for each acknowledgement.
pub struct RecordWriter {
    producer: FutureProducer,
    topic: String,
    in_flight: FuturesUnordered<rdkafka::producer::DeliveryFuture>,
    written: u64,
}

impl std::fmt::Debug for RecordWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWriter")
            .field("topic", &self.topic)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl RecordWriter {
    pub fn new(settings: &KafkaSettings, topic: impl Into<String>) -> Result<Self, KafkaError> {
        let mut config = producer_config(settings);
        // A copy is throughput work: let batches fill, and give a slow broker time.
        config
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000");
        Ok(Self {
            producer: config.create().map_err(KafkaError::Client)?,
            topic: topic.into(),
            in_flight: FuturesUnordered::new(),
            written: 0,
        })
    }

    /// Queues `record` (its partition number is not kept: the key decides, as for every
    /// writer of the log). Order per key is kept.
    pub async fn write(&mut self, record: &ScannedRecord) -> Result<(), KafkaError> {
        while self.in_flight.len() >= IN_FLIGHT {
            self.settle_one().await?;
        }
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let topic = self.topic.clone();
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            out = out.payload(value.as_slice());
        }
        if let Some(ts) = record.timestamp_ms {
            out = out.timestamp(ts);
        }
        let mut pending = out;
        loop {
            match self.producer.send_result(pending) {
                Ok(delivery) => {
                    self.in_flight.push(delivery);
                    return Ok(());
                }
                Err((err, back))
                    if err.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    pending = back;
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    } else {
                        self.settle_one().await?;
                    }
                }
                Err((err, _)) => return Err(KafkaError::Refused(err)),
            }
        }
    }

    async fn settle_one(&mut self) -> Result<(), KafkaError> {
        match self.in_flight.next().await {
            Some(Ok(Ok(_))) => {
                self.written += 1;
                Ok(())
            }
            Some(Ok(Err((err, _)))) => Err(KafkaError::Delivery(err)),
            Some(Err(_)) => Err(KafkaError::ConsumerStopped),
            None => Ok(()),
        }
    }

    /// Waits for every queued record; returns how many were written in all.
    pub async fn finish(&mut self) -> Result<u64, KafkaError> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok(self.written)
    }
}
