//! Errors of the Kafka adapter.

/// A Kafka operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client could not be created: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    /// The record was sent and not confirmed: it may be in the log.
    #[error("kafka did not acknowledge the record: {0}")]
    Delivery(#[source] rdkafka::error::KafkaError),
    /// The record never reached a broker, or the broker refused it: it is not in the log.
    #[error("kafka did not write the record: {0}")]
    NotWritten(#[source] rdkafka::error::KafkaError),
    /// The producer refused to queue the record (it never left this process).
    #[error("kafka producer refused the record: {0}")]
    Refused(#[source] rdkafka::error::KafkaError),
    #[error("kafka producer queue stayed full for {0:?}")]
    QueueFull(std::time::Duration),
    #[error("kafka admin request failed: {0}")]
    Admin(String),
    #[error("kafka read failed: {0}")]
    Read(#[source] rdkafka::error::KafkaError),
    #[error("kafka did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("kafka consumer thread stopped")]
    ConsumerStopped,
}

impl KafkaError {
    /// Whether a failed append may still be in the log: only a record that was sent and not
    /// confirmed (librdkafka's "possibly persisted", a delivery timeout above all). A caller
    /// must then not tell a publisher that nothing was written.
    pub fn may_have_been_written(&self) -> bool {
        matches!(self, KafkaError::Delivery(_))
    }
}
