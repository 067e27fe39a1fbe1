//! `compare` for session windows: each record of the scope that the relay has carried (below
//! its group's committed offset) against the window entry at its offset, a few thousand
//! records at a time, many sessions at once. Entries trimmed off a window's old end are not
//! missing; entries the log does not back are extra; a chain link (`p`) that skips a record
//! of the session is a difference.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use agentwire_protocol::{Offset, SessionKey};
use agentwire_valkey::{HistoryStore, StoredEntry, WindowSlice};
use futures::{StreamExt as _, TryStreamExt as _};

use crate::error::DrillError;
use crate::report::{Finding, Kind, Report};
use crate::scope::Scope;
use crate::walk::Visited;

/// Records buffered before their windows are read.
const FLUSH_AT: usize = 4_000;
/// Window reads in flight.
const READS: usize = 64;

#[derive(Debug, Default)]
struct WindowState {
    /// The last offset of the partition whose entries were compared.
    checked_through: Option<Offset>,
    /// Whether a window existed at any read.
    exists: bool,
    /// Whether any of the session's records was relayed (below the relay's committed offset).
    relayed: bool,
    last_ms: Option<i64>,
    partition: i32,
}

/// Compares windows with the log as the walk goes.
#[derive(Debug)]
pub struct WindowCheck {
    store: HistoryStore,
    /// Per partition: the relay group's committed offset (records below it were carried).
    relayed_until: BTreeMap<i32, Offset>,
    pending: Vec<Visited>,
    sessions: HashMap<SessionKey, WindowState>,
    /// Sessions whose window disagrees with the log (a rebuild rewrites them).
    pub bad: BTreeSet<SessionKey>,
}

fn finding(session: &SessionKey, partition: i32, offset: Offset, detail: String) -> Finding {
    Finding {
        session: Some(session.to_string()),
        partition: Some(partition),
        offset: Some(offset.0),
        first_offset: None,
        detail,
    }
}

impl WindowCheck {
    pub fn new(store: HistoryStore, relayed_until: BTreeMap<i32, Offset>) -> Self {
        Self {
            store,
            relayed_until,
            pending: Vec::new(),
            sessions: HashMap::new(),
            bad: BTreeSet::new(),
        }
    }

    fn relayed_until(&self, partition: i32) -> Offset {
        self.relayed_until
            .get(&partition)
            .copied()
            .unwrap_or(Offset(0))
    }

    pub async fn record(
        &mut self,
        visited: Visited,
        scope: &Scope,
        report: &mut Report,
    ) -> Result<(), DrillError> {
        self.pending.push(visited);
        if self.pending.len() >= FLUSH_AT {
            self.flush(scope, report).await?;
        }
        Ok(())
    }

    /// Compares what is buffered.
    pub async fn flush(&mut self, scope: &Scope, report: &mut Report) -> Result<(), DrillError> {
        let mut by_session: BTreeMap<SessionKey, Vec<Visited>> = BTreeMap::new();
        for v in self.pending.drain(..) {
            by_session.entry(v.session.clone()).or_default().push(v);
        }
        let mut reads = Vec::new();
        for (session, records) in by_session {
            let Some(first) = records.first() else {
                continue;
            };
            let partition = first.partition;
            let until = self.relayed_until(partition);
            let state = self.sessions.entry(session.clone()).or_default();
            state.partition = partition;
            state.last_ms = records
                .iter()
                .rev()
                .find_map(|r| r.timestamp_ms)
                .or(state.last_ms);
            let relayed: Vec<Visited> = records.into_iter().filter(|r| r.offset < until).collect();
            let Some(last) = relayed.last().map(|r| r.offset) else {
                continue;
            };
            state.relayed = true;
            let lo = match state.checked_through {
                Some(through) => Offset(through.0 + 1),
                None => scope.range(partition).map_or(Offset(0), |r| r.from),
            };
            state.checked_through = Some(last);
            reads.push((session, relayed, lo, last));
        }
        let store = self.store.clone();
        let slices: Vec<(SessionKey, Vec<Visited>, Offset, Offset, WindowSlice)> =
            futures::stream::iter(reads)
                .map(|(session, records, lo, hi)| {
                    let store = store.clone();
                    async move {
                        let slice = store.window_slice(&session, lo, hi).await?;
                        Ok::<_, DrillError>((session, records, lo, hi, slice))
                    }
                })
                .buffer_unordered(READS)
                .try_collect()
                .await?;
        for (session, records, _, _, slice) in slices {
            self.evaluate(&session, &records, slice, report);
        }
        Ok(())
    }

    fn evaluate(
        &mut self,
        session: &SessionKey,
        records: &[Visited],
        slice: WindowSlice,
        report: &mut Report,
    ) {
        let Some(first) = slice.first else {
            return;
        };
        if let Some(state) = self.sessions.get_mut(session) {
            state.exists = true;
        }
        let top = slice.top.unwrap_or(first);
        let mut entries: BTreeMap<Offset, StoredEntry> =
            slice.entries.into_iter().map(|e| (e.offset, e)).collect();
        let mut bad = false;
        for r in records {
            match entries.remove(&r.offset) {
                Some(entry) if entry.json != r.json => {
                    bad = true;
                    report.find(
                        Kind::WindowEntryDiffers,
                        finding(
                            session,
                            r.partition,
                            r.offset,
                            "the entry's event differs from the record".into(),
                        ),
                    );
                }
                Some(entry) => {
                    if let (Some(expected), Some(link)) = (r.previous, entry.previous)
                        && Some(link) != expected
                    {
                        bad = true;
                        let expected = expected
                            .map_or("none (its first record)".to_owned(), |o| o.to_string());
                        report.find(
                            Kind::WindowEntryDiffers,
                            finding(session, r.partition, r.offset, format!("the entry links to offset {link}; the session's previous record is {expected}")),
                        );
                    }
                }
                None if r.offset >= first => {
                    bad = true;
                    let why = if r.offset > top {
                        format!("the window ends at offset {top}")
                    } else {
                        "inside the window's range".to_owned()
                    };
                    report.find(
                        Kind::WindowEntryMissing,
                        finding(
                            session,
                            r.partition,
                            r.offset,
                            format!("no entry for this record ({why})"),
                        ),
                    );
                }
                None => {}
            }
        }
        let partition = records.first().map_or(0, |r| r.partition);
        for (offset, _) in entries {
            bad = true;
            report.find(
                Kind::WindowEntryExtra,
                finding(
                    session,
                    partition,
                    offset,
                    "the log holds no record of the session at this offset".into(),
                ),
            );
        }
        if bad {
            self.bad.insert(session.clone());
        }
    }

    /// Compares what is left: buffered records, entries after each session's last record,
    /// and sessions with no window at all that were active within `idle_ttl`.
    pub async fn finish(
        &mut self,
        scope: &Scope,
        idle_ttl: Duration,
        report: &mut Report,
    ) -> Result<(), DrillError> {
        self.flush(scope, report).await?;
        let now_ms = crate::now_ms();
        let ttl_ms = i64::try_from(idle_ttl.as_millis()).unwrap_or(i64::MAX);
        let Self {
            store,
            relayed_until,
            sessions,
            bad,
            ..
        } = self;
        // Entries after each session's last record, read a chunk of sessions at a time.
        let mut tails = Vec::new();
        for (session, state) in sessions.iter() {
            if !state.relayed {
                continue;
            }
            let until = relayed_until
                .get(&state.partition)
                .copied()
                .unwrap_or(Offset(0));
            let scope_end = scope
                .range(state.partition)
                .map_or(until, |r| r.until)
                .min(until);
            let after = state.checked_through.map_or(0, |o| o.0 + 1);
            if state.exists && after < scope_end.0 {
                tails.push((
                    session,
                    state.partition,
                    Offset(after),
                    Offset(scope_end.0 - 1),
                ));
                if tails.len() >= TAIL_CHUNK {
                    read_tails(store, std::mem::take(&mut tails), bad, report).await?;
                }
            }
            let recent = state
                .last_ms
                .is_none_or(|ms| now_ms.saturating_sub(ms) < ttl_ms);
            if !state.exists && recent {
                bad.insert(session.clone());
                report.find(
                    Kind::WindowAbsent,
                    Finding {
                        session: Some(session.to_string()),
                        partition: Some(state.partition),
                        offset: state.checked_through.map(|o| o.0),
                        first_offset: None,
                        detail:
                            "the session has records within the window's idle TTL and no window"
                                .into(),
                    },
                );
            }
        }
        read_tails(store, tails, bad, report).await?;
        Ok(())
    }
}

/// Sessions whose window tails are read at once.
const TAIL_CHUNK: usize = 2_000;

/// Reads each session's window after its last record: any entry there is extra.
async fn read_tails(
    store: &HistoryStore,
    tails: Vec<(&SessionKey, i32, Offset, Offset)>,
    bad: &mut BTreeSet<SessionKey>,
    report: &mut Report,
) -> Result<(), DrillError> {
    let slices: Vec<(&SessionKey, i32, WindowSlice)> = futures::stream::iter(tails)
        .map(|(session, partition, lo, hi)| async move {
            let slice = store.window_slice(session, lo, hi).await?;
            Ok::<_, DrillError>((session, partition, slice))
        })
        .buffer_unordered(READS)
        .try_collect()
        .await?;
    for (session, partition, slice) in slices {
        for entry in slice.entries {
            bad.insert(session.clone());
            report.find(
                Kind::WindowEntryExtra,
                finding(
                    session,
                    partition,
                    entry.offset,
                    "after the session's last record in the log".into(),
                ),
            );
        }
    }
    Ok(())
}
