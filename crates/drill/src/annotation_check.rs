//! `compare` for annotation marks: a session's mark per enrichment version (the highest
//! source offset announced, see `lua/annotate.lua`) must not be ahead of the enrichments of
//! that version in the enriched topic. A mark ahead would make the relay drop later
//! enrichments as replays: subscribers would never get them.

use std::collections::{BTreeMap, HashMap};

use agentwire_kafka::{KafkaSettings, LogScan, PartitionRange, Watermarks, partition_count};
use agentwire_protocol::{Enrichment, Offset, SessionKey};
use agentwire_valkey::{HistoryStore, UNVERSIONED_MARK};
use futures::{StreamExt as _, TryStreamExt as _};

use crate::error::DrillError;
use crate::progress::Progress;
use crate::report::{Finding, Kind, Report};
use crate::scope::Scope;

/// A mark to set back (`None`: to delete).
#[derive(Debug)]
pub struct MarkFix {
    pub session: SessionKey,
    pub version: String,
    pub to: Option<Offset>,
}

/// The highest source offset enriched, per session and version, in the whole enriched topic.
async fn enriched(
    kafka: &KafkaSettings,
    enriched_topic: &str,
    scope: &Scope,
) -> Result<Option<HashMap<SessionKey, BTreeMap<String, Offset>>>, DrillError> {
    let partitions = partition_count(kafka, enriched_topic).await?;
    if partitions == 0 {
        return Ok(None);
    }
    let mut ranges = Vec::new();
    let marks = Watermarks::new(kafka)?;
    for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
        let (low, high) = marks.get(enriched_topic, partition).await?;
        ranges.push(PartitionRange {
            partition,
            from: Offset(u64::try_from(low).unwrap_or(0)),
            until: Offset(u64::try_from(high).unwrap_or(0)),
        });
    }
    let total = ranges.iter().map(PartitionRange::len).sum();
    let mut progress = Progress::new(&format!("compare: reading {enriched_topic}"), total);
    let mut highest: HashMap<SessionKey, BTreeMap<String, Offset>> = HashMap::new();
    let mut scan = LogScan::start(kafka, enriched_topic, &ranges)?;
    while let Some(batch) = scan.next().await? {
        progress.advance(batch.len() as u64);
        for record in &batch {
            let Some(e) = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<Enrichment>(v).ok())
            else {
                continue;
            };
            if e.source.topic != scope.topic || !scope.includes(&e.session) {
                continue;
            }
            let version = e.version().to_owned();
            let top = highest
                .entry(e.session)
                .or_default()
                .entry(version)
                .or_insert(e.source.offset);
            *top = (*top).max(e.source.offset);
        }
    }
    progress.finish();
    Ok(Some(highest))
}

/// Compares the marks of `sessions` (and of every session with enrichments in the log);
/// returns the marks to set back.
pub async fn compare(
    kafka: &KafkaSettings,
    enriched_topic: &str,
    scope: &Scope,
    store: &HistoryStore,
    seen: &HashMap<SessionKey, crate::walk::SessionSeen>,
    report: &mut Report,
) -> Result<Vec<MarkFix>, DrillError> {
    let Some(highest) = enriched(kafka, enriched_topic, scope).await? else {
        report.notes.push(format!(
            "annotation marks were not compared: topic {enriched_topic:?} does not exist"
        ));
        return Ok(Vec::new());
    };
    // Every session of the scope and every session with enrichments, a chunk at a time so
    // that memory does not grow with a second copy of the sessions.
    let mut all = seen
        .keys()
        .chain(highest.keys().filter(|s| !seen.contains_key(*s)))
        .peekable();
    let mut fixes = Vec::new();
    while all.peek().is_some() {
        let chunk: Vec<&SessionKey> = all.by_ref().take(CHUNK).collect();
        let mut marks: Vec<(&SessionKey, BTreeMap<String, Offset>)> = futures::stream::iter(chunk)
            .map(|session| async move {
                let marks = store.annotation_marks(session).await?;
                Ok::<_, DrillError>((session, marks))
            })
            .buffer_unordered(64)
            .try_collect()
            .await?;
        marks.sort_by(|a, b| a.0.cmp(b.0));
        evaluate(enriched_topic, &highest, marks, &mut fixes, report);
    }
    Ok(fixes)
}

/// Sessions whose marks are read at once.
const CHUNK: usize = 2_000;

fn evaluate(
    enriched_topic: &str,
    highest: &HashMap<SessionKey, BTreeMap<String, Offset>>,
    marks: Vec<(&SessionKey, BTreeMap<String, Offset>)>,
    fixes: &mut Vec<MarkFix>,
    report: &mut Report,
) {
    for (session, marks) in marks {
        let logged = highest.get(session);
        for (version, mark) in marks {
            let log_top = match logged {
                // A marker from before versions covers every version.
                Some(tops) if version == UNVERSIONED_MARK => tops.values().max().copied(),
                Some(tops) => tops.get(&version).copied(),
                None => None,
            };
            if log_top.is_some_and(|top| mark <= top) {
                continue;
            }
            let said = log_top.map_or("no enrichment of that version".to_owned(), |t| {
                format!("enrichments up to offset {t}")
            });
            report.find(
                Kind::AnnotationMarkAhead,
                Finding {
                    session: Some(session.to_string()),
                    partition: None,
                    offset: Some(mark.0),
                    first_offset: None,
                    detail: format!("version {version:?} marked through offset {mark}; {enriched_topic} has {said}"),
                },
            );
            fixes.push(MarkFix {
                session: session.clone(),
                version,
                to: log_top,
            });
        }
    }
}
