//! Group commit of task transitions: every transition a gateway makes goes through one
//! committer, which appends what callers handed it as one record per tenant
//! (`TaskRecord::batch_json`) and answers each caller when Kafka acknowledged its record.
//!
//! At most [`IN_FLIGHT`] appends are outstanding; what arrives meanwhile waits and goes out
//! together in the next record. An idle gateway appends each transition at once (one record,
//! no added latency); a busy one writes far fewer records than transitions, which is what the
//! broker's cost follows. Order: the committer hands records to the producer in arrival
//! order, and a tenant's records share a key (one partition), so a tenant's transitions keep
//! the order they were made in.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentwire_kafka::{Appended, EventLog, LogRecord};
use agentwire_protocol::task::tenant_key;
use agentwire_protocol::{ErrorCode, TaskRecord, Tenant};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::ApiError;
use crate::metrics as m;

/// Appends outstanding at once.
const IN_FLIGHT: usize = 4;
/// Most transitions in one record.
const MAX_TRANSITIONS: usize = 512;
/// Most payload bytes (JSON or base64 text) in one record, beside the transitions' own
/// fields; one larger task is written alone.
const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Callers waiting for the committer at most.
const QUEUE: usize = 65_536;

type Answer = Result<Appended, ApiError>;

struct Pending {
    records: Vec<TaskRecord>,
    done: oneshot::Sender<Answer>,
}

/// Hands transitions to the group committer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
}

fn payload_bytes(records: &[TaskRecord]) -> usize {
    records
        .iter()
        .filter_map(|r| r.doc.as_ref())
        .map(|d| {
            d.payload.as_ref().map_or(0, |p| p.get().len())
                + d.payload_base64.as_ref().map_or(0, String::len)
        })
        .sum()
}

fn unavailable(err: &agentwire_kafka::KafkaError) -> ApiError {
    if err.may_have_been_written() {
        ApiError::new(
            ErrorCode::OutcomeUnknown,
            format!(
                "kafka did not confirm the append ({err}): it may or may not be in the log; \
                 retry with the same idempotency_key (or lease) to learn which"
            ),
        )
        .retry_after(crate::error::KAFKA_RETRY_AFTER)
    } else {
        ApiError::kafka_unavailable(err)
    }
}

impl Committer {
    /// Starts the committer appending to `log` (the task topic).
    pub fn start(log: EventLog) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(run(log, pending));
        Self { queue }
    }

    /// Appends `records` and waits for Kafka's acknowledgement: where the record holding
    /// them went (`None` when there was nothing to append).
    pub async fn append(&self, records: Vec<TaskRecord>) -> Result<Option<Appended>, ApiError> {
        if records.is_empty() {
            return Ok(None);
        }
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending { records, done })
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the task committer stopped"))?;
        answer
            .await
            .map_err(|_| {
                ApiError::new(ErrorCode::Internal, "the task committer dropped an append")
            })?
            .map(Some)
    }
}

async fn run(log: EventLog, mut pending: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = pending.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Everything that arrived while the earlier appends were outstanding goes together.
        let mut group = vec![first];
        let mut count = group[0].records.len();
        let mut bytes = payload_bytes(&group[0].records);
        while count < MAX_TRANSITIONS && bytes < MAX_PAYLOAD_BYTES {
            match pending.try_recv() {
                Ok(next) => {
                    count += next.records.len();
                    bytes += payload_bytes(&next.records);
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        metrics::histogram!(m::TASK_COMMIT_SIZE).record(count as f64);
        // One record per tenant (its key), the transitions in arrival order.
        let mut by_tenant: BTreeMap<Tenant, (Vec<TaskRecord>, Vec<usize>)> = BTreeMap::new();
        let mut answers = Vec::with_capacity(group.len());
        for (i, item) in group.into_iter().enumerate() {
            for record in item.records {
                let entry = by_tenant.entry(record.tenant.clone()).or_default();
                entry.0.push(record);
                if entry.1.last() != Some(&i) {
                    entry.1.push(i);
                }
            }
            answers.push(Some(item.done));
        }
        let mut appends = Vec::with_capacity(by_tenant.len());
        for (tenant, (records, waiters)) in by_tenant {
            let record = LogRecord {
                key: tenant_key(&tenant),
                value: TaskRecord::batch_json(&records),
                content_type: agentwire_kafka::CLOUDEVENTS_JSON,
                traceparent: None,
                tracestate: None,
            };
            let outcome = log.enqueue(&record).await.map_err(|e| unavailable(&e));
            appends.push((outcome, waiters));
        }
        tokio::spawn(async move {
            // Each caller gets the outcome of its records: the first failure among them.
            let mut outcomes: Vec<Option<Answer>> = (0..answers.len()).map(|_| None).collect();
            for (outcome, waiters) in appends {
                let answer = match outcome {
                    Ok(ack) => ack.await.map_err(|e| unavailable(&e)),
                    Err(err) => Err(err),
                };
                for i in waiters {
                    let slot = &mut outcomes[i];
                    match (&slot, &answer) {
                        (Some(Err(_)), _) => {}
                        _ => *slot = Some(answer.clone()),
                    }
                }
            }
            drop(slot);
            for (done, outcome) in answers.into_iter().zip(outcomes) {
                if let (Some(done), Some(outcome)) = (done, outcome) {
                    let _ = done.send(outcome);
                }
            }
        });
    }
}
