//! The only crate that names rdkafka: topic administration, the idempotent event-log
//! producer, the relay's consumer poll loop and a range reader for replays.
//!
//! Offsets: [`LogMessage::offset`] is the Kafka offset of that record (inclusive). Storing
//! an offset with [`OffsetStore::store`] means "this record and everything before it in its
//! partition is done"; librdkafka commits `offset + 1`, the next record to read.

mod args;
mod config;
mod consumer;
mod error;
mod groups;
mod keyed_reader;
mod partitioner;
mod partitions;
mod producer;
mod reader;
mod scan;
mod topics;
mod writer;

pub use args::KafkaArgs;
pub use config::{ConsumerSettings, KafkaSettings};
pub use consumer::{CONSUMER_LAG, ConsumerEvent, LogConsumer, LogMessage, OffsetStore};
pub use error::KafkaError;
pub use groups::{GroupInfo, commit_group_offsets, committed_offsets, describe_group};
pub use keyed_reader::{KeyedRead, KeyedReader, ReadBudget};
pub use partitioner::{murmur2, partition_for};
pub use partitions::Partitions;
pub use producer::{Appended, EventLog, LogRecord, PRODUCER_REPLACEMENTS, producer_config};
pub use reader::{Watermarks, read_range, watermarks};
pub use scan::{LogScan, PartitionRange, ScannedRecord, offsets_for_time};
pub use topics::{ensure_topic, ensure_topic_like, partition_count};
pub use writer::RecordWriter;

/// Kafka record header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Kafka record header carrying the W3C `tracestate` that goes with `traceparent`.
pub const TRACESTATE_HEADER: &str = "tracestate";
/// Kafka record header naming the record's format (CloudEvents Kafka binding, structured mode).
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// The record value's media type: a CloudEvents JSON event.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json; charset=UTF-8";
