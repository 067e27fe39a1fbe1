//! Topic administration: the embedded broker (nisshi) does not auto-create topics, so the stack
//! scripts and tests create them explicitly.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSettings;
use crate::error::KafkaError;

/// Creates `topic` with `partitions` partitions unless it exists. Idempotent.
pub async fn ensure_topic(
    settings: &KafkaSettings,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        settings.base().create().map_err(KafkaError::Client)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| KafkaError::Admin(e.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Admin(format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

/// Creates `topic` (if missing) with as many partitions as `source`, so a record keyed like a
/// source record lands in the same partition number (derived topics such as `agent.enriched`).
pub async fn ensure_topic_like(
    settings: &KafkaSettings,
    source: &str,
    topic: &str,
) -> Result<(), KafkaError> {
    let partitions = partition_count(settings, source).await?;
    ensure_topic(
        settings,
        topic,
        i32::try_from(partitions.max(1)).unwrap_or(i32::MAX),
    )
    .await
}

/// How many partitions `topic` has (0 if the broker does not know it).
pub async fn partition_count(settings: &KafkaSettings, topic: &str) -> Result<usize, KafkaError> {
    let client = std::sync::Arc::new(crate::reader::reader(settings)?);
    crate::partitions::fetch_count(client, topic.to_owned()).await
}
