//! A session's history after a cursor, for catch-up and `GET …/events`: from the Valkey
//! window where its chain of entries reaches back to the cursor, and from the session's Kafka
//! partition where it does not (trimmed, expired or lost windows). The log is the truth; the
//! window is only the fast path.

use std::time::Duration;

use agentwire_kafka::{
    KafkaError, KafkaSettings, Watermarks, partition_count, partition_for, read_range,
};
use agentwire_protocol::{Offset, SessionKey, cloudevents};
use agentwire_valkey::{Gap, HistoryStore, ValkeyError};
use tokio::sync::OnceCell;

use crate::metrics as m;

/// Records read from the partition per Kafka fetch round when scanning for a session.
const LOG_CHUNK: u64 = 5_000;
/// Longest time one chunk read may take.
const LOG_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a history read failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Valkey(#[from] ValkeyError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Retention already deleted part of the range: events after the cursor may be gone.
    #[error("the log no longer holds offsets after {after} (it starts at {first_retained})")]
    Retention {
        after: Offset,
        first_retained: Offset,
    },
    #[error("the log topic has no partitions")]
    NoPartitions,
}

/// Events of a session after a cursor, in offset order.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// The newest offset of the session's window, if it has one.
    pub latest: Option<Offset>,
    pub events: Vec<(Offset, String)>,
    /// How many of `events` were read from Kafka rather than the window.
    pub from_log: usize,
}

/// Reads history from the window, falling back to the log.
#[derive(Debug)]
pub struct HistoryReader {
    store: HistoryStore,
    kafka: KafkaSettings,
    /// One client for every watermark query of the process.
    watermarks: Watermarks,
    topic: String,
    /// Bumped by the operator when offsets change meaning (see [`cursor_epoch`]).
    generation: u64,
    partitions: OnceCell<usize>,
}

/// The epoch of a session's offsets: a digest of what gives an offset its meaning (the
/// topic, its partition count, the session's partition and the log generation). Equal epochs
/// mean a cursor still points into the same log; a different one means the log was reset.
pub fn cursor_epoch(topic: &str, partitions: usize, partition: i32, generation: u64) -> String {
    let identity = format!("{topic}\0{partitions}\0{partition}\0{generation}");
    format!("{:08x}", agentwire_kafka::murmur2(identity.as_bytes()))
}

impl HistoryReader {
    pub fn new(
        store: HistoryStore,
        kafka: KafkaSettings,
        topic: String,
        generation: u64,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            store,
            watermarks: Watermarks::new(&kafka)?,
            kafka,
            topic,
            generation,
            partitions: OnceCell::new(),
        })
    }

    /// The epoch of `session`'s offsets (see [`cursor_epoch`]).
    pub async fn epoch(&self, session: &SessionKey) -> Result<String, HistoryError> {
        let partitions = self.partitions().await?;
        let partition = partition_for(session.to_string().as_bytes(), partitions);
        Ok(cursor_epoch(
            &self.topic,
            partitions,
            partition,
            self.generation,
        ))
    }

    pub fn store(&self) -> &HistoryStore {
        &self.store
    }

    /// Up to `limit` events after `after` (exclusive). With `after = None`: the window only,
    /// from its oldest entry.
    pub async fn read(
        &self,
        session: &SessionKey,
        after: Option<Offset>,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let window = self.store.read_after(session, after, limit).await?;
        let Some(gap) = after.and_then(|a| window.gap(a)) else {
            return Ok(Page {
                latest: window.latest,
                events: window.entries,
                from_log: 0,
            });
        };
        let mut events = self.read_log(session, gap, limit).await?;
        let from_log = events.len();
        metrics::counter!(m::LOG_READS).increment(1);
        // The log filled the gap: the window's entries (all at or after the gap's end) follow.
        if events.len() < limit && gap.until.is_some() {
            let room = limit - events.len();
            events.extend(window.entries.into_iter().take(room));
        }
        Ok(Page {
            latest: window.latest,
            events,
            from_log,
        })
    }

    /// A cursor for "only new events": the session's latest offset, or, for a session with
    /// no event in its window, the last offset of its partition now (every later event of the
    /// session comes after it). `None` only for an empty partition. Clients resume from it.
    pub async fn resume_point(&self, session: &SessionKey) -> Result<Option<Offset>, HistoryError> {
        if let Some(latest) = self.store.latest(session).await? {
            return Ok(Some(latest));
        }
        let partition = partition_for(session.to_string().as_bytes(), self.partitions().await?);
        let (_, high) = self.watermarks.get(&self.topic, partition).await?;
        Ok(u64::try_from(high)
            .ok()
            .and_then(|h| h.checked_sub(1))
            .map(Offset))
    }

    async fn partitions(&self) -> Result<usize, HistoryError> {
        let count = self
            .partitions
            .get_or_try_init(|| async {
                match partition_count(&self.kafka, &self.topic).await? {
                    0 => Err(HistoryError::NoPartitions),
                    n => Ok(n),
                }
            })
            .await?;
        Ok(*count)
    }

    /// The session's events in the gap, read from its partition and filtered by key.
    async fn read_log(
        &self,
        session: &SessionKey,
        gap: Gap,
        limit: usize,
    ) -> Result<Vec<(Offset, String)>, HistoryError> {
        let key = session.to_string();
        let partition = partition_for(key.as_bytes(), self.partitions().await?);
        let (low, high) = self.watermarks.get(&self.topic, partition).await?;
        let (low, high) = (
            Offset(u64::try_from(low).unwrap_or(0)),
            Offset(u64::try_from(high).unwrap_or(0)),
        );
        let mut from = Offset(gap.after.0 + 1);
        if from < low {
            return Err(HistoryError::Retention {
                after: gap.after,
                first_retained: low,
            });
        }
        let until = gap.until.map_or(high, |u| u.min(high));
        let mut events = Vec::new();
        while from < until && events.len() < limit {
            let chunk_end = Offset(until.0.min(from.0.saturating_add(LOG_CHUNK)));
            let records = read_range(
                &self.kafka,
                &self.topic,
                partition,
                from,
                chunk_end,
                LOG_READ_TIMEOUT,
            )
            .await?;
            for record in records {
                if record.key.as_deref() != Some(key.as_bytes()) {
                    continue;
                }
                // The relay's rule: an unreadable record of the session is a gap event.
                let entry = cloudevents::read_log_entry(
                    session,
                    partition,
                    record.offset,
                    record.value.as_deref(),
                );
                events.push((record.offset, entry.json));
                if events.len() == limit {
                    break;
                }
            }
            from = chunk_end;
        }
        tracing::debug!(%session, partition, after = %gap.after, found = events.len(), "history read from the log");
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::cursor_epoch;

    #[test]
    fn the_epoch_changes_with_whatever_changes_offset_meaning() {
        let base = cursor_epoch("agent.events", 12, 3, 1);
        assert_eq!(base, cursor_epoch("agent.events", 12, 3, 1), "stable");
        for other in [
            cursor_epoch("agent.events.v2", 12, 3, 1),
            cursor_epoch("agent.events", 24, 3, 1),
            cursor_epoch("agent.events", 12, 4, 1),
            cursor_epoch("agent.events", 12, 3, 2),
        ] {
            assert_ne!(base, other);
        }
    }
}
