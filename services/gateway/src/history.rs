//! A session's history after a cursor, for catch-up and `GET …/events`: from the Valkey
//! window where its chain of entries reaches back to the cursor, and from the session's Kafka
//! partition where it does not (trimmed, expired or lost windows). The log is the truth; the
//! window is only the fast path.
//!
//! Every page is bounded twice: by a count of events and by the bytes of their JSON
//! (`AGENTWIRE_PAGE_MAX_BYTES`), so a page of large events stays small. A page holds one event
//! at least, however large, so paging always makes progress; [`Page::more`] says whether to
//! read on, from [`Page::next_after`].
//!
//! A read from the log is bounded a third time, by the records it may examine of any session
//! (`AGENTWIRE_LOG_SCAN_MAX_RECORDS`): a quiet session in a busy partition gets a short, maybe
//! empty, page whose `next_after` lies past what was scanned. The records a read may scan are
//! charged up front to the tenant's log-scan quota (a GCRA bucket in Valkey shared by every
//! gateway, `AGENTWIRE_TENANT_LOG_SCAN_*`); over it, the read is refused with a wait. Like
//! the publish quota, it fails open when Valkey cannot answer in time.

use agentwire_runtime::trace;
use std::time::Duration;
use tracing::Instrument as _;

use agentwire_kafka::{
    KafkaError, KafkaSettings, KeyedReader, Partitions, ReadBudget, Watermarks, partition_for,
};
use agentwire_protocol::{Offset, SessionKey, cloudevents};
use agentwire_valkey::{Gap, HistoryStore, TenantLimiter, ValkeyError, Window};

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
    /// The tenant's history reads scanned the log faster than its quota allows.
    #[error("the tenant is over its log-scan quota; retry in {wait:?}")]
    ScanQuota { wait: Duration },
}

/// How much of the log history reads may scan.
#[derive(Clone, Debug)]
pub struct ScanLimits {
    /// Most records one read examines, of any session.
    pub per_read: usize,
    /// The tenants' log-scan quota.
    pub tenants: TenantLimiter,
    /// Longest wait for the quota check; past it the read goes on (fail open).
    pub quota_timeout: Duration,
}

/// Where a history read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The window only, from its oldest entry (`GET …/events` without `after` or `from`).
    Window,
    /// Strictly after a cursor: the window where its chain reaches back to the cursor, the
    /// log before that.
    After(Offset),
    /// From the first offset the session's partition still holds (`from: earliest`): like a
    /// cursor just before it.
    Earliest,
}

/// Events of a session after a cursor, in offset order.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// The newest offset of the session's window, if it has one.
    pub latest: Option<Offset>,
    pub events: Vec<(Offset, String)>,
    /// How many of `events` were read from Kafka rather than the window.
    pub from_log: usize,
    /// The page stopped at a bound: read again after [`Page::next_after`].
    pub more: bool,
    /// Where the next page starts (exclusive) when `more`: the page's last offset, or past it
    /// when the read scanned further without finding the session's events.
    pub next_after: Option<Offset>,
}

/// Reads history from the window, falling back to the log.
#[derive(Debug)]
pub struct HistoryReader {
    store: HistoryStore,
    /// One client for every watermark query of the process.
    watermarks: Watermarks,
    /// Reused consumers for reads from the log.
    readers: KeyedReader,
    topic: String,
    /// Bumped by the operator when offsets change meaning (see [`cursor_epoch`]).
    generation: u64,
    /// Most bytes of event JSON in one page (exceeded only by a page's single first event).
    page_max_bytes: usize,
    scan: ScanLimits,
    partitions: Partitions,
}

/// What a read from the log found.
struct LogPart {
    events: Vec<(Offset, String)>,
    more: bool,
    /// The last offset examined (or the read's cursor when it examined none).
    scanned_to: Option<Offset>,
}

/// The offsets of the session's partition a read takes from the log: from `from`
/// (inclusive) to `until` (exclusive; the end of the log when `None`). `after` is the read's
/// cursor (`None`: before the log's first offset).
#[derive(Clone, Copy, Debug)]
struct LogRange {
    after: Option<Offset>,
    from: Offset,
    until: Option<Offset>,
}

impl LogRange {
    /// The range of a window's gap after a cursor; `None` past the last offset Kafka can
    /// assign, where nothing can follow.
    fn of_gap(gap: Gap) -> Option<LogRange> {
        Some(LogRange {
            after: Some(gap.after),
            from: gap.after.next()?,
            until: gap.until,
        })
    }

    /// What a read from the log's first offset must take from the log before `window` (read
    /// from its oldest entry), if anything: everything before its first entry, or the whole
    /// log without one, unless that entry is the log's first offset. Neither the relay's link
    /// nor an empty window proves that nothing came earlier.
    fn before_window(window: &Window) -> Option<LogRange> {
        let until = match window.entries.first() {
            Some((Offset(0), _)) => return None,
            Some((first, _)) => Some(*first),
            None => None,
        };
        Some(LogRange {
            after: None,
            from: Offset(0),
            until,
        })
    }
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
        partitions: Partitions,
        topic: String,
        generation: u64,
        page_max_bytes: usize,
        scan: ScanLimits,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            store,
            watermarks: Watermarks::new(&kafka)?,
            readers: KeyedReader::new(&kafka, LOG_READERS),
            topic,
            generation,
            page_max_bytes,
            scan,
            partitions,
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

    /// Up to `limit` events from `from` (see [`ReadFrom`]), and no more than the page's byte
    /// bound. Traced as one `history read` span (catch-ups and `GET …/events`), with how much
    /// came from the log.
    pub async fn read(
        &self,
        session: &SessionKey,
        from: ReadFrom,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let after = match from {
            ReadFrom::After(after) => Some(trace::int(after.0)),
            ReadFrom::Window | ReadFrom::Earliest => None,
        };
        let span = tracing::info_span!(
            "history read",
            agentwire.session = %session,
            agentwire.history.after = after,
            agentwire.history.earliest = from == ReadFrom::Earliest,
            agentwire.history.events = tracing::field::Empty,
            agentwire.history.from_log = tracing::field::Empty,
        );
        let page = self
            .read_from(session, from, limit)
            .instrument(span.clone())
            .await?;
        span.record("agentwire.history.events", trace::int(page.events.len()));
        span.record("agentwire.history.from_log", trace::int(page.from_log));
        Ok(page)
    }

    /// A read from the log's first offset is a read after the offset before it; retention
    /// may move that first offset between the two looks, so a read it overtook starts again.
    async fn read_from(
        &self,
        session: &SessionKey,
        from: ReadFrom,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        if from != ReadFrom::Earliest {
            return self.read_page(session, from, limit).await;
        }
        let mut tries = 3;
        loop {
            match self.read_page(session, from, limit).await {
                Err(HistoryError::Retention { .. }) if tries > 1 => tries -= 1,
                read => return read,
            }
        }
    }

    async fn read_page(
        &self,
        session: &SessionKey,
        from: ReadFrom,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let max_bytes = self.page_max_bytes;
        let after = match from {
            ReadFrom::Window => None,
            ReadFrom::After(after) => Some(after),
            ReadFrom::Earliest => self
                .first_retained(session)
                .await?
                .0
                .checked_sub(1)
                .map(Offset),
        };
        let window = self
            .store
            .read_page(session, after, limit, max_bytes)
            .await?;
        let range = match (from, after) {
            (ReadFrom::Window, _) => None,
            (_, Some(after)) => window.gap(after).and_then(LogRange::of_gap),
            (_, None) => LogRange::before_window(&window),
        };
        let Some(range) = range else {
            let next_after = window.more.then(|| window.entries.last().map(|e| e.0));
            return Ok(Page {
                latest: window.latest,
                next_after: next_after.flatten(),
                events: window.entries,
                from_log: 0,
                more: window.more,
            });
        };
        let budget = ReadBudget {
            records: limit,
            bytes: max_bytes,
            scanned: self.scan.per_read,
        };
        let LogPart {
            mut events,
            mut more,
            scanned_to,
        } = self.read_log(session, range, budget).await?;
        let from_log = events.len();
        metrics::counter!(m::LOG_READS).increment(1);
        // The log filled the gap: the window's entries (all at or after the gap's end) follow,
        // within what is left of the page.
        if !more && range.until.is_some() {
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
        let last = events.last().map(|e| e.0);
        let next_after = more.then(|| last.max(scanned_to)).flatten();
        Ok(Page {
            latest: window.latest,
            events,
            from_log,
            more,
            next_after,
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

    /// The first offset the session's partition still holds (its low watermark).
    async fn first_retained(&self, session: &SessionKey) -> Result<Offset, HistoryError> {
        let partition = partition_for(session.to_string().as_bytes(), self.partitions().await?);
        let (low, _) = self.watermarks.get(&self.topic, partition).await?;
        Ok(Offset(u64::try_from(low).unwrap_or(0)))
    }

    async fn partitions(&self) -> Result<usize, HistoryError> {
        match self.partitions.count().await? {
            0 => Err(HistoryError::NoPartitions),
            n => Ok(n),
        }
    }

    /// The session's events in `range`, read from its partition (only the session's records
    /// are kept), within `budget`; whether the budget stopped the read, and where.
    async fn read_log(
        &self,
        session: &SessionKey,
        range: LogRange,
        budget: ReadBudget,
    ) -> Result<LogPart, HistoryError> {
        let key = session.to_string();
        let partition = partition_for(key.as_bytes(), self.partitions().await?);
        let (low, high) = self.watermarks.get(&self.topic, partition).await?;
        let (low, high) = (
            Offset(u64::try_from(low).unwrap_or(0)),
            Offset(u64::try_from(high).unwrap_or(0)),
        );
        let LogRange { after, from, until } = range;
        if from < low {
            return Err(HistoryError::Retention {
                after: after.unwrap_or(from),
                first_retained: low,
            });
        }
        let until = until.map_or(high, |u| u.min(high));
        let cost = until
            .0
            .saturating_sub(from.0)
            .min(u64::try_from(budget.scanned).unwrap_or(u64::MAX));
        self.charge_scan(session, cost).await?;
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
        metrics::counter!(m::LOG_RECORDS_SCANNED)
            .increment(u64::try_from(read.scanned).unwrap_or(u64::MAX));
        tracing::debug!(%session, partition, %from, found = events.len(), scanned = read.scanned, more = read.more, "history read from the log");
        Ok(LogPart {
            events,
            more: read.more,
            scanned_to: read.next.0.checked_sub(1).map(Offset).max(after),
        })
    }

    /// Charges `records` to the tenant's log-scan quota (failing open like the publish quota).
    async fn charge_scan(&self, session: &SessionKey, records: u64) -> Result<(), HistoryError> {
        let Ok(units) = u32::try_from(records) else {
            return Err(HistoryError::ScanQuota {
                wait: Duration::from_secs(1),
            });
        };
        if units == 0 {
            return Ok(());
        }
        let limits = &self.scan;
        let over = crate::tenant_limits::charge_or_allow(
            &limits.tenants,
            &session.tenant,
            units,
            limits.quota_timeout,
        )
        .await;
        match over {
            None => Ok(()),
            Some(wait) => {
                metrics::counter!(m::LOG_SCANS_LIMITED).increment(1);
                Err(HistoryError::ScanQuota { wait })
            }
        }
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
