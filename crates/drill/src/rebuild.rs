//! `rebuild`: makes Valkey agree with the log for the scope while the stack serves. Windows
//! that `compare` found wrong are rebuilt from the log under a staging key and swapped in
//! atomically with the entries relayed meanwhile (`lua/swap_window.lua`), so subscribers lose
//! and repeat nothing; producer states are repaired (never lowered); a rewritten session's
//! shared state is put back from its newest `agent.session.state` event when Valkey's is
//! older or gone. A second run finds nothing to change.

use std::collections::{BTreeMap, BTreeSet};

use agentwire_kafka::{LogScan, PartitionRange};
use agentwire_protocol::{Offset, SessionKey};
use agentwire_valkey::{HistoryStore, ProducerSettings, ProducerStore, StoredEntry};

use crate::args::{Common, ValkeyContext};
use crate::check::{Checked, check};
use crate::error::DrillError;
use crate::progress::Progress;
use crate::report::Report;
use crate::scope::Scope;
use crate::walk::Walk;

/// Entries staged per round trip.
const STAGE_AT: usize = 4_000;

pub async fn rebuild(
    common: &Common,
    ctx: &ValkeyContext,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), DrillError> {
    let kafka = common.kafka.settings();
    let scope = Scope::resolve(&kafka, &common.kafka.topic, &common.scope).await?;
    let checked = check(common, &scope, Some(ctx), false, report).await?;
    report.change("windows to rewrite", checked.bad_sessions.len() as u64);
    report.change(
        "producer states to repair",
        checked.bad_producers.len() as u64,
    );
    report.change(
        "annotation marks to set back",
        checked.mark_fixes.len() as u64,
    );
    if dry_run
        || (checked.bad_sessions.is_empty()
            && checked.bad_producers.is_empty()
            && checked.mark_fixes.is_empty())
    {
        return Ok(());
    }
    let store = HistoryStore::connect(&ctx.valkey.url, ctx.valkey.history()).await?;
    report.repaired = true;
    rewrite_windows(common, &scope, &store, &checked, report).await?;
    for fix in &checked.mark_fixes {
        match fix.to {
            Some(offset) => {
                store
                    .set_annotation_mark(&fix.session, &fix.version, offset)
                    .await?
            }
            None => {
                store
                    .delete_annotation_mark(&fix.session, &fix.version)
                    .await?;
            }
        }
        report.change("annotation marks set back", 1);
    }
    let producers = ProducerStore::new(
        store.connection(),
        ProducerSettings {
            window: ctx.producer_window,
            ttl: ctx.producer_ttl(),
            ..ProducerSettings::default()
        },
    );
    for d in &checked.bad_producers {
        if producers.repair(&d.tenant, &d.producer, &d.state).await? {
            report.change("producer states repaired", 1);
        } else {
            report.notes.push(format!(
                "producer {}/{} moved to a newer epoch meanwhile; left as it is",
                d.tenant, d.producer
            ));
        }
    }
    Ok(())
}

async fn rewrite_windows(
    common: &Common,
    scope: &Scope,
    store: &HistoryStore,
    checked: &Checked,
    report: &mut Report,
) -> Result<(), DrillError> {
    let bad = &checked.bad_sessions;
    if bad.is_empty() {
        return Ok(());
    }
    let partitions: BTreeSet<i32> = (0..i32::try_from(scope.partitions).unwrap_or(i32::MAX))
        .filter(|p| bad.iter().any(|s| partition_of(s, scope.partitions) == *p))
        .collect();
    // Up to what the relays had carried when the check started; later records are in the
    // live windows and move over at the swap.
    let ranges: Vec<PartitionRange> = scope
        .ranges
        .iter()
        .filter(|r| partitions.contains(&r.partition))
        .map(|r| PartitionRange {
            until: r.until.min(
                checked
                    .relayed_until
                    .get(&r.partition)
                    .copied()
                    .unwrap_or(r.until),
            ),
            ..*r
        })
        .collect();
    let mut scratch = Report::new("rebuild", 0);
    let mut walk = Walk::new(scope, true, false, 1);
    let mut staged: BTreeSet<SessionKey> = BTreeSet::new();
    let mut buffer: BTreeMap<SessionKey, Vec<StoredEntry>> = BTreeMap::new();
    let mut buffered = 0;
    // The newest shared state each rewritten session's log holds, put back after the walk.
    let mut states = BTreeMap::new();
    let total: u64 = ranges.iter().map(PartitionRange::len).sum();
    let mut progress = Progress::new("rebuild: reading windows from the log", total);
    let mut scan = LogScan::start(&common.kafka.settings(), &scope.topic, &ranges)?;
    while let Some(batch) = scan.next().await? {
        progress.advance(batch.len() as u64);
        for record in &batch {
            let Some(v) = walk.visit(scope, record, &mut scratch)? else {
                continue;
            };
            if !bad.contains(&v.session) {
                continue;
            }
            if let Some(state) =
                agentwire_protocol::session_state::state_in_event(&v.session, &v.json)
            {
                states.insert(v.session.clone(), state);
            }
            buffer.entry(v.session).or_default().push(StoredEntry {
                offset: v.offset,
                json: v.json,
                previous: v.previous.flatten(),
            });
            buffered += 1;
        }
        if buffered >= STAGE_AT {
            stage(store, &mut buffer, &mut staged, report).await?;
            buffered = 0;
        }
    }
    stage(store, &mut buffer, &mut staged, report).await?;
    progress.finish();
    drop(scan);
    let state_store = agentwire_valkey::SessionStateStore::new(store.connection());
    for state in states.values() {
        if state_store.restore(state).await? {
            report.change("session states restored", 1);
        }
    }
    for session in bad {
        let partition = partition_of(session, scope.partitions);
        let Some(until) = ranges
            .iter()
            .find(|r| r.partition == partition)
            .map(|r| r.until)
        else {
            continue;
        };
        let read_through = Offset(until.0.saturating_sub(1));
        match store.swap_window(session, read_through, None).await? {
            Some(kept) => {
                report.change("windows rewritten", 1);
                report.change("live entries kept at the swap", kept);
            }
            None => report.change("windows deleted (no record in the log)", 1),
        }
    }
    Ok(())
}

async fn stage(
    store: &HistoryStore,
    buffer: &mut BTreeMap<SessionKey, Vec<StoredEntry>>,
    staged: &mut BTreeSet<SessionKey>,
    report: &mut Report,
) -> Result<(), DrillError> {
    use futures::{StreamExt as _, TryStreamExt as _};
    let work: Vec<(SessionKey, Vec<StoredEntry>, bool)> = std::mem::take(buffer)
        .into_iter()
        .map(|(s, entries)| {
            let fresh = staged.insert(s.clone());
            (s, entries, fresh)
        })
        .collect();
    let entries: u64 = work.iter().map(|w| w.1.len() as u64).sum();
    futures::stream::iter(work)
        .map(|(session, entries, fresh)| {
            let store = store.clone();
            async move { store.stage_entries(&session, &entries, fresh).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    report.change("entries written from the log", entries);
    Ok(())
}

fn partition_of(session: &SessionKey, partitions: usize) -> i32 {
    agentwire_kafka::partition_for(session.to_string().as_bytes(), partitions)
}
