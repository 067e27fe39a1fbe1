//! A session's history after a cursor, for catch-up and `GET …/events`: from the Valkey
//! window where its chain of entries reaches back to the cursor, and from the session's Kafka
//! partition where it does not (trimmed, expired or lost windows). The log is the truth; the
//! window is only the fast path.
//!
//! Every page is bounded twice: by a count of events and by the bytes of their JSON
//! (`AGENTWIRE_PAGE_MAX_BYTES`), so a page of large events stays small. A page holds one event
//! at least, however large, so paging always makes progress; [`Page::more`] says whether to
//! read on from the last offset.

use std::time::Duration;

use agentwire_kafka::{
    KafkaError, KafkaSettings, KeyedReader, ReadBudget, Watermarks, partition_count, partition_for,
};
use agentwire_protocol::{Offset, SessionKey, cloudevents};
use agentwire_valkey::{Gap, HistoryStore, ValkeyError};
use tokio::sync::OnceCell;

use crate::metrics as m;

/// Log reads running at once per process (each holds a Kafka consumer, kept for reuse).
const LOG_READERS: usize = 8;
/// Longest wait for the next record of a log read (or for a free reader).
const LOG_READ_STALL: Duration = Duration::from_secs(10);

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
    /// The page stopped at its count or byte bound: read again after its last offset.
    pub more: bool,
}

/// Reads history from the window, falling back to the log.
#[derive(Debug)]
pub struct HistoryReader {
    store: HistoryStore,
    kafka: KafkaSettings,
    /// One client for every watermark query of the process.
    watermarks: Watermarks,
    /// Reused consumers for reads from the log.
    readers: KeyedReader,
    topic: String,
    /// Bumped by the operator when offsets change meaning (see [`cursor_epoch`]).
    generation: u64,
    /// Most bytes of event JSON in one page (exceeded only by a page's single first event).
    page_max_bytes: usize,
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
        page_max_bytes: usize,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            store,
            watermarks: Watermarks::new(&kafka)?,
            readers: KeyedReader::new(&kafka, LOG_READERS),
            kafka,
            topic,
            generation,
            page_max_bytes,
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

    /// Up to `limit` events after `after` (exclusive), and no more than the page's byte
    /// bound. With `after = None`: the window only, from its oldest entry.
    pub async fn read(
        &self,
        session: &SessionKey,
        after: Option<Offset>,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let max_bytes = self.page_max_bytes;
        let window = self
            .store
            .read_page(session, after, limit, max_bytes)
            .await?;
        let Some(gap) = after.and_then(|a| window.gap(a)) else {
            return Ok(Page {
                latest: window.latest,
                events: window.entries,
                from_log: 0,
                more: window.more,
            });
        };
        let budget = ReadBudget {
            records: limit,
            bytes: max_bytes,
        };
        let (mut events, mut more) = self.read_log(session, gap, budget).await?;
        let from_log = events.len();
        metrics::counter!(m::LOG_READS).increment(1);
        // The log filled the gap: the window's entries (all at or after the gap's end) follow,
        // within what is left of the page.
        if !more && gap.until.is_some() {
            more = window.more;
            let mut bytes: usize = events.iter().map(|(_, json)| json.len()).sum();
            for (offset, json) in window.entries {
                let fits = events.is_empty() || bytes.saturating_add(json.len()) <= max_bytes;
                if events.len() >= limit || !fits {
                    more = true;
                    break;
                }
                bytes = bytes.saturating_add(json.len());
                events.push((offset, json));
            }
        }
        Ok(Page {
            latest: window.latest,
            events,
            from_log,
            more,
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

    /// The session's events in the gap, read from its partition (only the session's records
    /// are kept), within `budget`; and whether the budget stopped the read.
    async fn read_log(
        &self,
        session: &SessionKey,
        gap: Gap,
        budget: ReadBudget,
    ) -> Result<(Vec<(Offset, String)>, bool), HistoryError> {
        let key = session.to_string();
        let partition = partition_for(key.as_bytes(), self.partitions().await?);
        let (low, high) = self.watermarks.get(&self.topic, partition).await?;
        let (low, high) = (
            Offset(u64::try_from(low).unwrap_or(0)),
            Offset(u64::try_from(high).unwrap_or(0)),
        );
        // Past the last offset Kafka can assign nothing can follow (cursors are checked at
        // the edge; this keeps the arithmetic total).
        let Some(from) = gap.after.next() else {
            return Ok((Vec::new(), false));
        };
        if from < low {
            return Err(HistoryError::Retention {
                after: gap.after,
                first_retained: low,
            });
        }
        let until = gap.until.map_or(high, |u| u.min(high));
        let read = self
            .readers
            .read(
                &self.topic,
                partition,
                key.as_bytes(),
                from,
                until,
                budget,
                LOG_READ_STALL,
            )
            .await?;
        // The relay's rule: an unreadable record of the session is a gap event.
        let events: Vec<(Offset, String)> = read
            .records
            .into_iter()
            .map(|record| {
                let entry = cloudevents::read_log_entry(
                    session,
                    partition,
                    record.offset,
                    record.value.as_deref(),
                );
                (record.offset, entry.json)
            })
            .collect();
        tracing::debug!(%session, partition, after = %gap.after, found = events.len(), more = read.more, "history read from the log");
        Ok((events, read.more))
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
