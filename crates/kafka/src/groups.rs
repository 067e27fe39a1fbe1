//! Consumer groups seen from outside: who is in a group, where it stands, and moving its
//! committed offsets (a replay drill's redrive), only while nobody consumes in it.

use std::collections::BTreeMap;
use std::time::Duration;

use agentwire_protocol::Offset;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::error::KafkaError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer group as the broker describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// The broker's state name (`Empty`, `Stable`, `PreparingRebalance`, `Dead`…).
    pub state: String,
    /// Consumers currently in the group.
    pub members: usize,
}

fn group_client(settings: &KafkaSettings, group: &str) -> Result<BaseConsumer, KafkaError> {
    settings
        .base()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(KafkaError::Client)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| KafkaError::ConsumerStopped)?
}

/// Describes `group` (a group the broker does not know reads as `Dead` with no members).
pub async fn describe_group(
    settings: &KafkaSettings,
    group: &str,
) -> Result<GroupInfo, KafkaError> {
    let client = group_client(settings, group)?;
    let group = group.to_owned();
    blocking(move || {
        let list = client
            .fetch_group_list(Some(&group), TIMEOUT)
            .map_err(KafkaError::Read)?;
        Ok(list
            .groups()
            .iter()
            .find(|g| g.name() == group)
            .map_or_else(
                || GroupInfo {
                    state: "Dead".to_owned(),
                    members: 0,
                },
                |g| GroupInfo {
                    state: g.state().to_owned(),
                    members: g.members().len(),
                },
            ))
    })
    .await
}

/// The offsets `group` committed for `partitions` of `topic` (`None`: nothing committed).
pub async fn committed_offsets(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, Option<Offset>>, KafkaError> {
    let client = group_client(settings, group)?;
    let (topic, partitions) = (topic.to_owned(), partitions.to_vec());
    blocking(move || {
        let mut tpl = TopicPartitionList::new();
        for partition in &partitions {
            tpl.add_partition(&topic, *partition);
        }
        let committed = client
            .committed_offsets(tpl, TIMEOUT)
            .map_err(KafkaError::Read)?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    KafkaOffset::Offset(o) => u64::try_from(o).ok().map(Offset),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect())
    })
    .await
}

/// Commits `offsets` (the next record each partition's consumers will read) for `group`.
/// The caller checks first that the group has no live members ([`describe_group`]): a live
/// member would overwrite them with its own commits.
pub async fn commit_group_offsets(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, Offset>,
) -> Result<(), KafkaError> {
    let client = group_client(settings, group)?;
    let topic = topic.to_owned();
    let offsets = offsets.clone();
    blocking(move || {
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in &offsets {
            let next = i64::try_from(offset.0).unwrap_or(i64::MAX);
            tpl.add_partition_offset(&topic, *partition, KafkaOffset::Offset(next))
                .map_err(KafkaError::Read)?;
        }
        client
            .commit(&tpl, CommitMode::Sync)
            .map_err(KafkaError::Read)
    })
    .await
}
