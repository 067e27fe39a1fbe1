//! The per-record checks of `verify`, run on every record of the scope in log order: keys,
//! decoding, per-session order, event ids and producer sequences. Memory grows with sessions
//! and producers, never with records (ids and sequences go through [`DuplicateFinder`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use agentwire_kafka::ScannedRecord;
use agentwire_protocol::{Event, Offset, ProducerId, SessionKey, Tenant, cloudevents};
use agentwire_valkey::{Accumulator, Outcome};

use crate::dupes::DuplicateFinder;
use crate::error::DrillError;
use crate::report::{Finding, Kind, Report, TenantCounts};
use crate::scope::Scope;

/// Keys each duplicate finder keeps in memory before it spills a sorted run to disk.
const IN_MEMORY_KEYS: usize = 262_144;

/// What the walk knows of a session.
#[derive(Clone, Debug)]
pub struct SessionSeen {
    pub partition: i32,
    pub last: Offset,
    pub records: u64,
    /// The newest record's timestamp (ms since the epoch).
    pub last_ms: Option<i64>,
}

/// A record of the scope as a window should hold it.
#[derive(Clone, Debug)]
pub struct Visited {
    pub session: SessionKey,
    pub partition: i32,
    pub offset: Offset,
    /// What a window holds at this offset: the event, or the gap event standing in for an
    /// unreadable record.
    pub json: String,
    /// The session's previous record: `Some(None)` when this is its first in the log,
    /// `None` when the scope does not say (it starts after the partition's first record).
    pub previous: Option<Option<Offset>>,
    pub timestamp_ms: Option<i64>,
}

/// A partition and an offset.
type At = (i32, u64);

/// A producer's sequences of one epoch seen so far: ranges `start → (end, where start was,
/// where end was)`.
#[derive(Debug, Default)]
struct SeqRanges(BTreeMap<u64, (u64, At, At)>);

impl SeqRanges {
    fn insert(&mut self, seq: u64, at: (i32, u64)) {
        let before = self.0.range(..=seq).next_back().map(|(s, v)| (*s, *v));
        if let Some((_, (end, _, _))) = before
            && end >= seq
        {
            return;
        }
        let mut start = (seq, at);
        let mut end = (seq, at);
        if let Some((s, (e, s_at, _))) = before
            && e + 1 == seq
        {
            self.0.remove(&s);
            start = (s, s_at);
        }
        if let Some((e, e_at)) = seq
            .checked_add(1)
            .and_then(|n| self.0.remove(&n).map(|(e, _, e_at)| (e, e_at)))
        {
            end = (e, e_at);
        }
        self.0.insert(start.0, (end.0, start.1, end.1));
    }

    /// `(first missing, last missing, where the sequence before was, where the one after was)`.
    fn gaps(&self) -> impl Iterator<Item = (u64, u64, At, At)> + '_ {
        self.0.iter().zip(self.0.iter().skip(1)).map(
            |((_, (end, _, end_at)), (next, (_, next_at, _)))| {
                (end + 1, next - 1, *end_at, *next_at)
            },
        )
    }
}

/// The state of a walk over the scope.
#[derive(Debug)]
pub struct Walk {
    pub sessions: HashMap<SessionKey, SessionSeen>,
    event_ids: DuplicateFinder,
    producer_seqs: DuplicateFinder,
    seqs: HashMap<(Tenant, ProducerId, u64), SeqRanges>,
    /// Producer states as the log tells them (only kept when `track_producers`).
    pub producers: HashMap<Tenant, Accumulator>,
    /// The newest record's timestamp per producer (with `track_producers`).
    pub producer_last_ms: HashMap<(Tenant, ProducerId), i64>,
    track_producers: bool,
    producer_window: u64,
    whole_partitions: bool,
    /// Whether callers want each record as a window holds it (a copy of every event).
    entries: bool,
}

fn seq_key(tenant: &Tenant, producer: &ProducerId, epoch: u64, seq: u64) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        (salt, tenant.as_str(), producer.as_str(), epoch, seq).hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

impl Walk {
    /// `entries`: [`Walk::visit`] returns each record as a window holds it (a comparison with
    /// Valkey needs them; the log's own checks do not).
    pub fn new(scope: &Scope, entries: bool, track_producers: bool, producer_window: u64) -> Self {
        Self {
            sessions: HashMap::new(),
            event_ids: DuplicateFinder::new(IN_MEMORY_KEYS),
            producer_seqs: DuplicateFinder::new(IN_MEMORY_KEYS),
            seqs: HashMap::new(),
            producers: HashMap::new(),
            producer_last_ms: HashMap::new(),
            track_producers,
            producer_window,
            whole_partitions: scope.whole_partitions,
            entries,
        }
    }

    /// Checks one record; returns it as a window would hold it, when it is in scope.
    pub fn visit(
        &mut self,
        scope: &Scope,
        record: &ScannedRecord,
        report: &mut Report,
    ) -> Result<Option<Visited>, DrillError> {
        let (partition, offset) = (record.partition, record.offset);
        let session = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.parse::<SessionKey>().ok());
        let Some(session) = session else {
            if scope.includes_unkeyed() {
                report.records_read += 1;
                report.find(
                    Kind::UnkeyedRecord,
                    Finding {
                        session: None,
                        partition: Some(partition),
                        offset: Some(offset.0),
                        first_offset: None,
                        detail: "the record has no session key (tenant:agent_type:session_id); no reader sees it".into(),
                    },
                );
            }
            return Ok(None);
        };
        if !scope.includes(&session) {
            return Ok(None);
        }
        report.records_read += 1;
        let at = |detail: String| Finding {
            session: Some(session.to_string()),
            partition: Some(partition),
            offset: Some(offset.0),
            first_offset: None,
            detail,
        };
        let parsed: Result<Event, &str> = match record.value.as_deref().map(std::str::from_utf8) {
            None => Err("empty"),
            Some(Err(_)) => Err("not_utf8"),
            Some(Ok(json)) => match cloudevents::from_json(json) {
                Ok(event) if event.session == session => Ok(event),
                Ok(_) => Err("key_mismatch"),
                Err(_) => Err("not_an_event"),
            },
        };
        let (previous, new_session) = match self.sessions.get_mut(&session) {
            Some(seen) => {
                if seen.partition != partition {
                    report.find(
                        Kind::SessionSplit,
                        at(format!(
                            "the session's earlier records are in partition {}",
                            seen.partition
                        )),
                    );
                } else if offset <= seen.last {
                    report.find(
                        Kind::OffsetOrder,
                        at(format!("after offset {} of the same session", seen.last)),
                    );
                }
                let previous = seen.last;
                seen.last = offset;
                seen.records += 1;
                seen.last_ms = record.timestamp_ms.or(seen.last_ms);
                (Some(Some(previous)), false)
            }
            None => {
                self.sessions.insert(
                    session.clone(),
                    SessionSeen {
                        partition,
                        last: offset,
                        records: 1,
                        last_ms: record.timestamp_ms,
                    },
                );
                (self.whole_partitions.then_some(None), true)
            }
        };
        let event_type = parsed
            .as_ref()
            .map_or("(invalid)", |e| e.event_type.as_str());
        count(report, &session, event_type, new_session);
        let json = match parsed {
            Ok(event) => {
                self.event(&session, &event, (partition, offset.0), record.timestamp_ms)?;
                if !self.entries {
                    return Ok(None);
                }
                record
                    .value
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .unwrap_or_default()
                    .to_owned()
            }
            Err(reason) => {
                report.find(
                    Kind::InvalidRecord,
                    at(format!("not a valid event of the session: {reason}")),
                );
                cloudevents::gap_event_json(&session, partition, offset, reason)
            }
        };
        Ok(Some(Visited {
            session,
            partition,
            offset,
            json,
            previous,
            timestamp_ms: record.timestamp_ms,
        }))
    }

    fn event(
        &mut self,
        session: &SessionKey,
        event: &Event,
        at: (i32, u64),
        timestamp_ms: Option<i64>,
    ) -> Result<(), DrillError> {
        if let Some(id) = event.id {
            self.event_ids.add(id.as_u128(), at)?;
        }
        let (Some(producer), Some(seq)) = (&event.producer_id, event.producer_seq) else {
            return Ok(());
        };
        let epoch = event.producer_epoch.unwrap_or(0);
        let tenant = &session.tenant;
        self.producer_seqs
            .add(seq_key(tenant, producer, epoch, seq), at)?;
        self.seqs
            .entry((tenant.clone(), producer.clone(), epoch))
            .or_default()
            .insert(seq, at);
        if self.track_producers {
            let outcome = Outcome {
                partition: at.0,
                offset: Offset(at.1),
            };
            let window = self.producer_window;
            self.producers
                .entry(tenant.clone())
                .or_insert_with(|| Accumulator::new(window))
                .add(producer, epoch, seq, outcome);
            if let Some(ms) = timestamp_ms {
                let last = self
                    .producer_last_ms
                    .entry((tenant.clone(), producer.clone()))
                    .or_insert(ms);
                *last = (*last).max(ms);
            }
        }
        Ok(())
    }

    /// Adds the per-session counts and, with `log_checks`, reports what only the whole walk
    /// shows (duplicates and sequence gaps). Without, the log's own findings are dropped: the
    /// caller compares Valkey with the log and reports only that.
    pub fn finish(&mut self, report: &mut Report, log_checks: bool) -> Result<(), DrillError> {
        for (session, seen) in &self.sessions {
            report.sessions.insert(session.to_string(), seen.records);
        }
        if !log_checks {
            report.findings.retain(|kind, _| !kind.is_log_finding());
            return Ok(());
        }
        let ids = std::mem::replace(&mut self.event_ids, DuplicateFinder::new(1));
        report_duplicates(ids, Kind::DuplicateEventId, report, |key| {
            format!("event id {}", uuid::Uuid::from_u128(key))
        })?;
        let seqs = std::mem::replace(&mut self.producer_seqs, DuplicateFinder::new(1));
        report_duplicates(seqs, Kind::DuplicateProducerSeq, report, |_| {
            "the same producer, epoch and sequence".to_owned()
        })?;
        let mut gaps: Vec<_> = self
            .seqs
            .iter()
            .flat_map(|((tenant, producer, epoch), ranges)| {
                ranges
                    .gaps()
                    .map(move |g| (tenant.clone(), producer.clone(), *epoch, g))
            })
            .collect();
        gaps.sort_by(|a, b| (&a.0, &a.1, a.2, a.3.0).cmp(&(&b.0, &b.1, b.2, b.3.0)));
        for (tenant, producer, epoch, (first, last, before, after)) in gaps {
            report.find(
                Kind::ProducerSeqGap,
                Finding {
                    session: None,
                    partition: Some(after.0),
                    offset: Some(after.1),
                    first_offset: Some(before.1),
                    detail: format!(
                        "producer {tenant}/{producer} epoch {epoch}: sequences {first}..={last} missing (the one before is at partition {} offset {}, the one after at partition {} offset {})",
                        before.0, before.1, after.0, after.1
                    ),
                },
            );
        }
        Ok(())
    }
}

/// Counts a record of `session` for its tenant (allocating names only when first seen).
fn count(report: &mut Report, session: &SessionKey, event_type: &str, new_session: bool) {
    let tenant = session.tenant.as_str();
    if !report.tenants.contains_key(tenant) {
        report
            .tenants
            .insert(tenant.to_owned(), TenantCounts::default());
    }
    let Some(counts) = report.tenants.get_mut(tenant) else {
        return;
    };
    counts.records += 1;
    if new_session {
        counts.sessions += 1;
    }
    match counts.types.get_mut(event_type) {
        Some(n) => *n += 1,
        None => {
            counts.types.insert(event_type.to_owned(), 1);
        }
    }
}

/// Reports every duplicate `finder` holds as `kind`, `what` naming the shared key.
fn report_duplicates(
    finder: DuplicateFinder,
    kind: Kind,
    report: &mut Report,
    what: impl Fn(u128) -> String,
) -> Result<(), DrillError> {
    finder.finish(|d| {
        report.find(
            kind,
            Finding {
                session: None,
                partition: Some(d.again.0),
                offset: Some(d.again.1),
                first_offset: Some(d.first.1),
                detail: format!(
                    "{} (first at partition {} offset {})",
                    what(d.key),
                    d.first.0,
                    d.first.1
                ),
            },
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_ranges_merge_and_name_their_gaps() {
        let mut r = SeqRanges::default();
        for (seq, offset) in [
            (1, 10),
            (2, 11),
            (5, 12),
            (3, 13),
            (9, 14),
            (4, 15),
            (4, 16),
        ] {
            r.insert(seq, (0, offset));
        }
        let gaps: Vec<_> = r.gaps().collect();
        assert_eq!(gaps, vec![(6, 8, (0, 12), (0, 14))]);
    }
}
