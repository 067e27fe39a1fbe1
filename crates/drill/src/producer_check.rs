//! `compare` for producer states: what `lua/producer.lua` holds against what the log says
//! (only when the scope covers whole partitions: a partial range cannot tell a whole state).

use std::collections::HashMap;
use std::time::Duration;

use agentwire_protocol::{ProducerId, Tenant};
use agentwire_valkey::{Accumulator, ProducerStore, Restored, StoredOutcome};

use crate::error::DrillError;
use crate::report::{Finding, Kind, Report};

/// A producer whose state disagrees with the log, with the log's state.
#[derive(Debug)]
pub struct Disagreeing {
    pub tenant: Tenant,
    pub producer: ProducerId,
    pub state: Restored,
}

fn finding(
    tenant: &Tenant,
    producer: &ProducerId,
    detail: String,
    offset: Option<(i32, u64)>,
) -> Finding {
    Finding {
        session: None,
        partition: offset.map(|o| o.0),
        offset: offset.map(|o| o.1),
        first_offset: None,
        detail: format!("producer {tenant}/{producer}: {detail}"),
    }
}

/// Compares every producer the walk saw; returns those to repair.
pub async fn compare(
    store: &ProducerStore,
    producers: HashMap<Tenant, Accumulator>,
    last_ms: &HashMap<(Tenant, ProducerId), i64>,
    ttl: Duration,
    report: &mut Report,
) -> Result<Vec<Disagreeing>, DrillError> {
    let now_ms = crate::now_ms();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    let mut tenants: Vec<_> = producers.into_iter().collect();
    tenants.sort_by(|a, b| a.0.cmp(&b.0));
    for (tenant, acc) in tenants {
        // Before the tenant's states were rebuilt (a fresh Valkey), the gateway rebuilds them
        // itself from the log at the first sequenced publish: nothing is missing yet.
        let ready = store.is_ready(&tenant).await?;
        let mut states = acc.finish();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        for (producer, state) in states {
            let problem = match store.stored(&tenant, &producer).await? {
                None => {
                    let recent = last_ms
                        .get(&(tenant.clone(), producer.clone()))
                        .is_none_or(|ms| now_ms.saturating_sub(*ms) < ttl_ms);
                    (ready && recent).then(|| {
                        (
                            Kind::ProducerStateMissing,
                            format!("no state; the log's is epoch {} next {}", state.epoch, state.next),
                            None,
                        )
                    })
                }
                Some(stored) if stored.epoch < state.epoch || (stored.epoch == state.epoch && stored.next < state.next) => Some((
                    Kind::ProducerStateBehind,
                    format!(
                        "state at epoch {} next {}, the log at epoch {} next {}: a retry of a sequence in the log would be appended again",
                        stored.epoch, stored.next, state.epoch, state.next
                    ),
                    None,
                )),
                Some(stored) if stored.epoch == state.epoch => state.outcomes.iter().find_map(|(seq, outcome)| {
                    let at = Some((outcome.partition, outcome.offset.0));
                    match stored.outcomes.get(seq) {
                        Some(StoredOutcome::Written(o)) if o != outcome => Some((
                            Kind::ProducerOutcomeDiffers,
                            format!("sequence {seq} recorded at partition {} offset {}, the log has it here", o.partition, o.offset),
                            at,
                        )),
                        Some(StoredOutcome::NotWritten) => Some((
                            Kind::ProducerOutcomeDiffers,
                            format!("sequence {seq} recorded as not written, the log has it here"),
                            at,
                        )),
                        _ => None,
                    }
                }),
                Some(_) => None,
            };
            if let Some((kind, detail, at)) = problem {
                report.find(kind, finding(&tenant, &producer, detail, at));
                out.push(Disagreeing {
                    tenant: tenant.clone(),
                    producer,
                    state,
                });
            }
        }
    }
    Ok(out)
}
