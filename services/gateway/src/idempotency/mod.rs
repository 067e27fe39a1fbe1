//! Idempotent publishing: a publish whose `(tenant, producer_id, producer_seq)` was already
//! accepted gets the original ack (`"duplicate": true`) and appends nothing; a sequence that
//! skips ahead gets `sequence_gap`, one from an older epoch `stale_epoch`.
//!
//! The state lives in Valkey (`agentwire_valkey::ProducerStore`, one atomic script), shared
//! by every gateway. Each sequenced publish *reserves* its sequence before the Kafka append
//! and *settles* it after: the outcome (partition, offset) on success, a release on failure.
//! When Valkey lost the state, the tenant's producers are rebuilt from the log first
//! (`rebuild.rs`). The races and what each one costs are in `docs/protocol.md`.

mod rebuild;

use std::time::Duration;

use agentwire_kafka::{KafkaSettings, Partitions, partition_for};
use agentwire_protocol::{Ack, ErrorCode, Event, Offset, ProducerId, Tenant};
use agentwire_valkey::{Outcome, ProducerStore, Reserve, Unsettled};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::metrics as m;

pub use agentwire_valkey::Accumulator;

/// How often a publish waiting on another gateway's append (or rebuild) looks again.
const POLL: Duration = Duration::from_millis(20);
/// The longest one gateway may hold a tenant's rebuild before another may take over.
const REBUILD_HOLD: Duration = Duration::from_secs(120);

/// A reserved sequence: the caller appends the event, then settles it.
#[derive(Clone, Debug)]
pub struct Ticket {
    tenant: Tenant,
    producer: ProducerId,
    epoch: u64,
    seq: u64,
}

/// What to do with a publish.
#[derive(Debug)]
pub enum Claim {
    /// No `producer_seq`: append, nothing to deduplicate.
    Unsequenced,
    /// Append, then settle the ticket.
    Append(Ticket),
    /// Already in the log: answer with this ack, append nothing.
    Duplicate(Ack),
}

/// The gateway's side of producer idempotency.
#[derive(Debug)]
pub struct Idempotency {
    store: ProducerStore,
    kafka: KafkaSettings,
    topic: String,
    /// Records per partition read back when rebuilding or checking an abandoned append.
    depth: u64,
    partitions: Partitions,
}

impl Idempotency {
    pub fn new(
        store: ProducerStore,
        kafka: KafkaSettings,
        partitions: Partitions,
        topic: String,
        depth: u64,
    ) -> Self {
        Self {
            store,
            kafka,
            topic,
            depth,
            partitions,
        }
    }

    /// Decides whether `event` is appended. Waits while another gateway appends the same
    /// sequence, and while the tenant's states are rebuilt from the log.
    pub async fn claim(&self, event: &Event) -> Result<Claim, ApiError> {
        let (Some(producer), Some(seq)) = (&event.producer_id, event.producer_seq) else {
            return Ok(Claim::Unsequenced);
        };
        let tenant = &event.session.tenant;
        let epoch = event.producer_epoch.unwrap_or(0);
        let give_up = Instant::now() + self.store.settings().pending_stale + REBUILD_HOLD;
        loop {
            let reply = self
                .store
                .reserve(tenant, producer, epoch, seq)
                .await
                .map_err(|e| ApiError::unavailable("valkey", e))?;
            let ticket = || Ticket {
                tenant: tenant.clone(),
                producer: producer.clone(),
                epoch,
                seq,
            };
            match reply {
                Reserve::Reserved => return Ok(Claim::Append(ticket())),
                Reserve::Duplicate(outcome) => return Ok(self.duplicate(event, outcome)),
                Reserve::Gap { expected } => {
                    return Err(ApiError {
                        expected_seq: Some(expected),
                        field: Some("producerseq".into()),
                        ..ApiError::new(
                            ErrorCode::SequenceGap,
                            format!(
                                "producerseq {seq} skips ahead: {expected} is expected next (epoch {epoch})"
                            ),
                        )
                    });
                }
                Reserve::StaleEpoch { current } => {
                    return Err(ApiError {
                        field: Some("producerepoch".into()),
                        ..ApiError::new(
                            ErrorCode::StaleEpoch,
                            format!("producerepoch {epoch} was fenced off by epoch {current}"),
                        )
                    });
                }
                Reserve::TooOld { expected } => {
                    return Err(ApiError {
                        field: Some("producerseq".into()),
                        ..ApiError::new(
                            ErrorCode::SequenceTooOld,
                            format!(
                                "producerseq {seq} was accepted before and is older than the last {} acks kept ({expected} is expected next); nothing was written",
                                self.store.settings().window
                            ),
                        )
                    });
                }
                Reserve::Takeover { .. } => {
                    metrics::counter!(m::PRODUCER_TAKEOVERS).increment(1);
                    return match self.find_in_log(event, producer, epoch, seq).await? {
                        Some(outcome) => {
                            self.settle(&ticket(), Ok(outcome)).await;
                            Ok(self.duplicate(event, outcome))
                        }
                        None => Ok(Claim::Append(ticket())),
                    };
                }
                Reserve::NotReady => self.rebuild(tenant).await?,
                Reserve::InFlight => tokio::time::sleep(POLL).await,
            }
            if Instant::now() >= give_up {
                return Err(ApiError::unavailable(
                    "the producer state",
                    "another append of this sequence did not finish in time",
                ));
            }
        }
    }

    /// Records the append's outcome: `Ok` with where Kafka stored it, `Err` with why there is
    /// none. A failure here is logged, not returned: the event is in the log either way, and a
    /// retry finds it there once the reservation goes stale.
    pub async fn settle(&self, ticket: &Ticket, appended: Result<Outcome, Unsettled>) {
        let Ticket {
            tenant,
            producer,
            epoch,
            seq,
        } = ticket;
        let result = match appended {
            Ok(outcome) => self
                .store
                .commit(tenant, producer, *epoch, *seq, outcome)
                .await
                .map(|_| ()),
            Err(why) => {
                self.store
                    .release(tenant, producer, *epoch, *seq, why)
                    .await
            }
        };
        if let Err(err) = result {
            tracing::warn!(%tenant, %producer, epoch, seq, error = %err, "could not record a producer sequence's outcome");
        }
    }

    /// Starts a new epoch for `producer`, fencing off the older ones.
    pub async fn new_epoch(&self, tenant: &Tenant, producer: &ProducerId) -> Result<u64, ApiError> {
        let unavailable = |e| ApiError::unavailable("valkey", e);
        loop {
            if let Some(epoch) = self
                .store
                .bump_epoch(tenant, producer)
                .await
                .map_err(unavailable)?
            {
                return Ok(epoch);
            }
            self.rebuild(tenant).await?;
        }
    }

    fn duplicate(&self, event: &Event, outcome: Outcome) -> Claim {
        metrics::counter!(m::DUPLICATE_PUBLISHES).increment(1);
        Claim::Duplicate(Ack {
            id: event.id.map(|id| id.to_string()).unwrap_or_default(),
            producer_seq: event.producer_seq,
            partition: outcome.partition,
            offset: outcome.offset,
            duplicate: true,
            trace_id: None,
        })
    }

    /// Rebuilds `tenant`'s producer states from the log, or waits while another gateway does.
    async fn rebuild(&self, tenant: &Tenant) -> Result<(), ApiError> {
        let unavailable = |e| ApiError::unavailable("valkey", e);
        if !self
            .store
            .lock_rebuild(tenant, REBUILD_HOLD)
            .await
            .map_err(unavailable)?
        {
            let give_up = Instant::now() + REBUILD_HOLD;
            while !self.store.is_ready(tenant).await.map_err(unavailable)? {
                if Instant::now() >= give_up {
                    return Err(ApiError::unavailable(
                        "the producer state",
                        "its rebuild from the log did not finish in time",
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = self.read_tenant(tenant).await;
        let outcome = match result {
            Ok(states) => {
                let count = states.len();
                let mut restored = Ok(());
                for (producer, state) in &states {
                    restored = self.store.restore(tenant, producer, state).await;
                    if restored.is_err() {
                        break;
                    }
                }
                match restored.and(self.store.mark_ready(tenant).await) {
                    Ok(()) => {
                        tracing::info!(%tenant, producers = count, seconds = started.elapsed().as_secs_f64(), "producer states rebuilt from the log");
                        metrics::counter!(m::PRODUCER_REBUILDS).increment(1);
                        Ok(())
                    }
                    Err(e) => Err(unavailable(e)),
                }
            }
            Err(err) => Err(err),
        };
        if let Err(err) = self.store.unlock_rebuild(tenant).await {
            tracing::warn!(%tenant, error = %err, "could not release the producer rebuild lock");
        }
        outcome
    }

    async fn read_tenant(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<(ProducerId, agentwire_valkey::Restored)>, ApiError> {
        let prefix = format!("{tenant}:");
        let mut acc = Accumulator::new(self.store.settings().window);
        for partition in 0..self.partitions().await? {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            rebuild::scan_partition(
                &self.kafka,
                &self.topic,
                partition,
                self.depth,
                |key| key.starts_with(prefix.as_bytes()),
                |event, offset| {
                    if let (Some(producer), Some(seq)) = (&event.producer_id, event.producer_seq) {
                        let epoch = event.producer_epoch.unwrap_or(0);
                        acc.add(producer, epoch, seq, Outcome { partition, offset });
                    }
                },
            )
            .await
            .map_err(ApiError::kafka_unavailable)?;
        }
        Ok(acc.finish())
    }

    /// Where the log holds `(producer, epoch, seq)` in the event's session, if it does.
    async fn find_in_log(
        &self,
        event: &Event,
        producer: &ProducerId,
        epoch: u64,
        seq: u64,
    ) -> Result<Option<Outcome>, ApiError> {
        let key = event.session.to_string();
        let partition = partition_for(key.as_bytes(), self.partitions().await?);
        let mut found: Option<Offset> = None;
        rebuild::scan_partition(
            &self.kafka,
            &self.topic,
            partition,
            self.depth,
            |k| k == key.as_bytes(),
            |logged, offset| {
                let same = logged.producer_id.as_ref() == Some(producer)
                    && logged.producer_epoch.unwrap_or(0) == epoch
                    && logged.producer_seq == Some(seq);
                if same && found.is_none() {
                    found = Some(offset);
                }
            },
        )
        .await
        .map_err(ApiError::kafka_unavailable)?;
        Ok(found.map(|offset| Outcome { partition, offset }))
    }

    async fn partitions(&self) -> Result<usize, ApiError> {
        match self.partitions.count().await {
            Ok(0) => Err(ApiError::unavailable(
                "kafka",
                "the log topic has no partitions",
            )),
            Ok(n) => Ok(n),
            Err(e) => Err(ApiError::kafka_unavailable(e)),
        }
    }
}
