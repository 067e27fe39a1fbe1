//! Errors of the Kafka adapter.

/// A Kafka operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client could not be created: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    #[error("kafka did not acknowledge the record: {0}")]
    Delivery(#[source] rdkafka::error::KafkaError),
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
