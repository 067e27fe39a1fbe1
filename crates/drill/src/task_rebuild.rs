//! Refills the work queues from the log (`agentwire tasks rebuild`), after Valkey was lost or
//! to repair it: reads `agent.tasks` whole, keeps per task its document (from its `enqueued`
//! record) and its newest status (highest version), and applies that to Valkey with the
//! queue script's versioned `apply`, which changes nothing Valkey already has at that
//! version or newer. So it is idempotent and safe while gateways serve.
//!
//! Every task without a terminal record comes back in the state its newest record says: a
//! task whose last record is `claimed` is claimed until that lease's recorded expiry, then
//! handed out again. Tasks that finished (completed or cancelled) longer ago than the
//! retention are not brought back. Memory grows with the number of tasks in the topic
//! (each kept with its payload until it is applied).
//!
//! At the end it marks the queues intact (`keys::task_queues_intact`): the relay's task
//! carrier, which finds that mark gone after Valkey lost its data, runs this same rebuild
//! before it applies another record.

use std::collections::BTreeMap;
use std::time::Duration;

use agentwire_kafka::{KafkaSettings, LogScan, PartitionRange, partition_count, watermarks};
use agentwire_protocol::{Offset, TaskDoc, TaskRecord, TaskStatus, Tenant};
use agentwire_valkey::{Applied, TaskStore};
use uuid::Uuid;

use crate::error::DrillError;

/// What a rebuild did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TaskRebuild {
    /// Records read from the topic.
    pub records: u64,
    /// Records that were not task records (skipped).
    pub unreadable: u64,
    /// Distinct tasks seen.
    pub tasks: u64,
    /// Tasks written to Valkey (it lacked them, or had an older version).
    pub applied: u64,
    /// Tasks Valkey already had at their newest version.
    pub current: u64,
    /// Finished tasks older than the retention, left out.
    pub expired: u64,
    /// Tasks whose `enqueued` record is gone from the topic (retention): cannot be rebuilt.
    pub without_document: u64,
    /// Second tasks under an idempotency key an earlier task holds: not created.
    pub duplicates: u64,
}

struct Folded {
    tenant: Tenant,
    doc: Option<TaskDoc>,
    status: TaskStatus,
}

/// Keeps a task's document and its newest status.
fn fold(tasks: &mut BTreeMap<Uuid, Folded>, parsed: TaskRecord) {
    let entry = tasks.entry(parsed.id).or_insert_with(|| Folded {
        tenant: parsed.tenant.clone(),
        doc: None,
        status: parsed.status.clone(),
    });
    if parsed.doc.is_some() && entry.doc.is_none() {
        entry.doc = parsed.doc;
    }
    if parsed.status.version > entry.status.version {
        entry.status = parsed.status;
    }
}

/// Reads the whole of `topic` and applies each task's newest status to `store`.
pub async fn rebuild_tasks(
    settings: &KafkaSettings,
    topic: &str,
    store: &TaskStore,
    retention: Duration,
    now_ms: u64,
) -> Result<TaskRebuild, DrillError> {
    let partitions = partition_count(settings, topic).await?;
    if partitions == 0 {
        return Err(DrillError::Usage(format!("topic {topic} does not exist")));
    }
    let mut ranges = Vec::with_capacity(partitions);
    for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
        let (low, high) = watermarks(settings, topic, partition).await?;
        ranges.push(PartitionRange {
            partition,
            from: Offset(u64::try_from(low).unwrap_or(0)),
            until: Offset(u64::try_from(high).unwrap_or(0)),
        });
    }
    let mut summary = TaskRebuild::default();
    // By id: UUIDv7 orders by enqueue time, so of two tasks under one idempotency key the
    // first is applied first and keeps the key.
    let mut tasks: BTreeMap<Uuid, Folded> = BTreeMap::new();
    let mut scan = LogScan::start(settings, topic, &ranges)?;
    while let Some(batch) = scan.next().await? {
        for record in batch {
            summary.records += 1;
            let Some(transitions) = record
                .value
                .as_deref()
                .and_then(|v| TaskRecord::parse_all(v).ok())
            else {
                summary.unreadable += 1;
                continue;
            };
            for parsed in transitions {
                fold(&mut tasks, parsed);
            }
        }
    }
    summary.tasks = tasks.len() as u64;
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    for (id, folded) in tasks {
        let Some(doc) = folded.doc else {
            summary.without_document += 1;
            continue;
        };
        if folded.status.state.is_terminal()
            && folded.status.updated_at_ms.saturating_add(retention_ms) < now_ms
        {
            summary.expired += 1;
            continue;
        }
        let record = TaskRecord {
            kind: agentwire_protocol::TaskEventKind::Enqueued,
            tenant: folded.tenant,
            id,
            doc: Some(doc),
            status: folded.status,
        };
        match store.apply(&record, true).await? {
            Applied::Applied => summary.applied += 1,
            Applied::Stale | Applied::Unknown | Applied::Absent => summary.current += 1,
            Applied::Duplicate => summary.duplicates += 1,
        }
    }
    store.mark_intact().await?;
    Ok(summary)
}
