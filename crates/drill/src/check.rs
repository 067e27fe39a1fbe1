//! One read of the scope that `verify`, `compare` and `rebuild` share: every record through
//! the walk's checks and, with Valkey, through the window comparison; then producer states.

use std::collections::{BTreeMap, BTreeSet};

use agentwire_kafka::{KafkaSettings, LogScan, committed_offsets};
use agentwire_protocol::{Offset, SessionKey};
use agentwire_valkey::{HistoryStore, ProducerSettings, ProducerStore};

use crate::annotation_check::{self, MarkFix};
use crate::args::{Common, ValkeyContext};
use crate::error::DrillError;
use crate::producer_check::{self, Disagreeing};
use crate::progress::Progress;
use crate::report::Report;
use crate::scope::Scope;
use crate::walk::Walk;
use crate::window_check::WindowCheck;

/// What a check found that a rebuild would change.
#[derive(Debug, Default)]
pub struct Checked {
    pub bad_sessions: BTreeSet<SessionKey>,
    pub bad_producers: Vec<Disagreeing>,
    pub mark_fixes: Vec<MarkFix>,
    /// Per partition: the relay group's committed offset when the check started.
    pub relayed_until: BTreeMap<i32, Offset>,
}

/// Where the relays stand: per partition the next record their group will read.
pub async fn relayed_until(
    kafka: &KafkaSettings,
    group: &str,
    scope: &Scope,
) -> Result<BTreeMap<i32, Offset>, DrillError> {
    let partitions: Vec<i32> = scope.ranges.iter().map(|r| r.partition).collect();
    let committed = committed_offsets(kafka, group, &scope.topic, &partitions).await?;
    let mut out = BTreeMap::new();
    for range in &scope.ranges {
        match committed.get(&range.partition).copied().flatten() {
            Some(offset) => {
                out.insert(range.partition, offset);
            }
            // Comparing nothing would read as clean: say why instead.
            None if !range.is_empty() => {
                return Err(DrillError::Usage(format!(
                    "the relay group {group:?} has committed nothing on partition {} of {}: is --relay-group (AGENTWIRE_RELAY_GROUP) right, and has a relay run?",
                    range.partition, scope.topic
                )));
            }
            None => {
                out.insert(range.partition, Offset(0));
            }
        }
    }
    Ok(out)
}

/// Reads the scope once. `log_checks`: report the log's own problems (verify); `valkey`:
/// compare windows and producer states with it.
pub async fn check(
    common: &Common,
    scope: &Scope,
    valkey: Option<&ValkeyContext>,
    log_checks: bool,
    report: &mut Report,
) -> Result<Checked, DrillError> {
    let kafka = common.kafka.settings();
    report.scope = scope.describe();
    let mut checked = Checked::default();
    let mut windows = None;
    let mut producers = None;
    let mut history = None;
    if let Some(ctx) = valkey {
        let store = HistoryStore::connect(&ctx.valkey.url, ctx.valkey.history()).await?;
        history = Some(store.clone());
        checked.relayed_until = relayed_until(&kafka, &ctx.relay_group, scope).await?;
        windows = Some(WindowCheck::new(
            store.clone(),
            checked.relayed_until.clone(),
        ));
        if scope.whole_partitions {
            let settings = ProducerSettings {
                window: ctx.producer_window,
                ttl: ctx.producer_ttl(),
                ..ProducerSettings::default()
            };
            producers = Some(ProducerStore::new(store.connection(), settings));
        } else {
            report.notes.push(
                "producer states were not compared: the scope does not cover whole partitions from their first record".into(),
            );
        }
    }
    let mut walk = Walk::new(
        scope,
        windows.is_some(),
        producers.is_some(),
        valkey.map_or(256, |c| c.producer_window),
    );
    let mut progress = Progress::new(
        &format!("{} {}", report.command, scope.topic),
        scope.records(),
    );
    let mut scan = LogScan::start(&kafka, &scope.topic, &scope.ranges)?;
    while let Some(batch) = scan.next().await? {
        progress.advance(batch.len() as u64);
        for record in &batch {
            let visited = walk.visit(scope, record, report)?;
            if let (Some(visited), Some(windows)) = (visited, windows.as_mut()) {
                windows.record(visited, scope, report).await?;
            }
        }
    }
    progress.finish();
    drop(scan);
    walk.finish(report, log_checks)?;
    if let (Some(mut windows), Some(ctx)) = (windows, valkey) {
        windows
            .finish(scope, ctx.valkey.history().idle_ttl, report)
            .await?;
        checked.bad_sessions = std::mem::take(&mut windows.bad);
    }
    if let (Some(store), Some(ctx)) = (history, valkey) {
        checked.mark_fixes = annotation_check::compare(
            &kafka,
            &ctx.enriched_topic,
            scope,
            &store,
            &walk.sessions,
            report,
        )
        .await?;
    }
    if let (Some(store), Some(ctx)) = (producers, valkey) {
        let states = std::mem::take(&mut walk.producers);
        checked.bad_producers = producer_check::compare(
            &store,
            states,
            &walk.producer_last_ms,
            ctx.producer_ttl(),
            report,
        )
        .await?;
    }
    Ok(checked)
}
