//! Producer sequence state for idempotent publishing: per `(tenant, producer_id)` the current
//! epoch, the next expected `producer_seq` and the outcome (partition and offset) of the last
//! `window` sequences, changed only by `lua/producer.lua`, so every gateway sees one atomic
//! state machine. Like everything in Valkey it is a cache of the log: after Valkey starts
//! empty the gateway rebuilds a tenant's states from the Kafka records (which carry
//! `producerid`, `producerepoch` and `producerseq`) before it accepts a sequenced publish.

use std::time::Duration;

use agentwire_protocol::{Offset, ProducerId, Tenant};
use redis::Script;

use crate::connection::Connection;
use crate::error::ValkeyError;
use crate::keys;

static PRODUCER: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/producer.lua")));

/// How much producer state is kept and how long an append may stay unconfirmed.
#[derive(Clone, Copy, Debug)]
pub struct ProducerSettings {
    /// Sequences per producer whose ack is kept for duplicate answers.
    pub window: u64,
    /// A producer's state is dropped after this long without a publish.
    pub ttl: Duration,
    /// An append still unconfirmed after this long is presumed abandoned (its gateway died):
    /// a retry takes it over.
    pub pending_stale: Duration,
    /// How long after Kafka failed to confirm an append (which may still land) a retry must
    /// wait before it looks in the log: at least the longest a sent produce request can
    /// still be written (the producer's delivery timeout).
    pub unknown_settle: Duration,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            window: 256,
            ttl: Duration::from_secs(24 * 3600),
            pending_stale: Duration::from_secs(60),
            unknown_settle: Duration::from_secs(5),
        }
    }
}

/// Where Kafka stored an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub partition: i32,
    pub offset: Offset,
}

impl Outcome {
    fn encode(self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }

    fn decode(text: &str) -> Result<Self, ValkeyError> {
        let bad = || ValkeyError::Reply(format!("bad producer outcome {text:?}"));
        let (partition, offset) = text.split_once(':').ok_or_else(bad)?;
        Ok(Self {
            partition: partition.parse().map_err(|_| bad())?,
            offset: Offset(offset.parse().map_err(|_| bad())?),
        })
    }
}

/// The answer to "may I append `(epoch, seq)`?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// The tenant's states were not rebuilt from the log since Valkey started empty.
    NotReady,
    /// The producer has moved on to a newer epoch.
    StaleEpoch { current: u64 },
    /// The sequence skips ahead of the next expected one.
    Gap { expected: u64 },
    /// This caller appends it and then commits or releases it.
    Reserved,
    /// Already appended: answer with the original outcome.
    Duplicate(Outcome),
    /// Another gateway is appending it right now.
    InFlight,
    /// Accepted long ago; its outcome left the window.
    TooOld { expected: u64 },
    /// An append unconfirmed since `since_ms` (Valkey clock) was abandoned; this caller now
    /// owns it and must find out from the log whether it landed.
    Takeover { since_ms: u64 },
}

/// Why a reserved append has no outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsettled {
    /// Nothing reached the broker: the sequence may be appended again at once.
    NotWritten,
    /// The broker may have written it (a delivery timeout): a retry waits
    /// [`ProducerSettings::unknown_settle`], then looks in the log before appending.
    Unknown,
}

/// A producer's state as read back from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub epoch: u64,
    /// One past the highest sequence of `epoch` in the log.
    pub next: u64,
    /// The newest outcomes of `epoch`, by sequence.
    pub outcomes: Vec<(u64, Outcome)>,
}

/// What a producer's state records about one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredOutcome {
    /// Kafka acknowledged it there.
    Written(Outcome),
    /// Its append failed before anything was sent (`f`).
    NotWritten,
    /// A gateway is appending it, or it is waiting to learn whether it landed.
    InFlight,
}

/// A producer's state as stored in Valkey.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredProducer {
    pub epoch: u64,
    pub next: u64,
    pub outcomes: std::collections::BTreeMap<u64, StoredOutcome>,
}

/// The producer states of every tenant.
#[derive(Clone)]
pub struct ProducerStore {
    conn: Connection,
    settings: ProducerSettings,
}

impl std::fmt::Debug for ProducerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn number(reply: &[String], what: &str) -> Result<u64, ValkeyError> {
    reply
        .get(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ValkeyError::Reply(format!("{what} without a number: {reply:?}")))
}

impl ProducerStore {
    pub fn new(conn: Connection, settings: ProducerSettings) -> Self {
        Self { conn, settings }
    }

    pub fn settings(&self) -> &ProducerSettings {
        &self.settings
    }

    fn invocation(
        &self,
        tenant: &Tenant,
        producer: &ProducerId,
        op: &str,
    ) -> redis::ScriptInvocation<'static> {
        let mut call = PRODUCER.key(keys::producer(tenant, producer));
        call.key(keys::producers_ready(tenant))
            .arg(op)
            .arg(millis(self.settings.ttl))
            .arg(self.settings.window);
        call
    }

    /// Asks to append `(epoch, seq)` of `producer`.
    pub async fn reserve(
        &self,
        tenant: &Tenant,
        producer: &ProducerId,
        epoch: u64,
        seq: u64,
    ) -> Result<Reserve, ValkeyError> {
        let reply: Vec<String> = self
            .invocation(tenant, producer, "reserve")
            .arg(epoch)
            .arg(seq)
            .arg(millis(self.settings.pending_stale))
            .arg(millis(self.settings.unknown_settle))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("not_ready") => Reserve::NotReady,
            Some("stale_epoch") => Reserve::StaleEpoch {
                current: number(&reply, "stale_epoch")?,
            },
            Some("gap") => Reserve::Gap {
                expected: number(&reply, "gap")?,
            },
            Some("reserved") => Reserve::Reserved,
            Some("duplicate") => {
                let outcome = reply
                    .get(1)
                    .ok_or_else(|| ValkeyError::Reply("duplicate without outcome".into()))?;
                Reserve::Duplicate(Outcome::decode(outcome)?)
            }
            Some("in_flight") => Reserve::InFlight,
            Some("too_old") => Reserve::TooOld {
                expected: number(&reply, "too_old")?,
            },
            Some("takeover") => Reserve::Takeover {
                since_ms: number(&reply, "takeover")?,
            },
            _ => return Err(ValkeyError::Reply(format!("producer reserve: {reply:?}"))),
        })
    }

    /// Records where Kafka stored `(epoch, seq)`. `false` when a newer epoch fenced it off.
    pub async fn commit(
        &self,
        tenant: &Tenant,
        producer: &ProducerId,
        epoch: u64,
        seq: u64,
        outcome: Outcome,
    ) -> Result<bool, ValkeyError> {
        let done: i64 = self
            .invocation(tenant, producer, "commit")
            .arg(epoch)
            .arg(seq)
            .arg(outcome.encode())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(done == 1)
    }

    /// Marks a reserved `(epoch, seq)` whose append did not succeed: a retry may append it at
    /// once when nothing was written ([`Unsettled::NotWritten`]), or once the append can no
    /// longer land and the log says it is not there ([`Unsettled::Unknown`]).
    pub async fn release(
        &self,
        tenant: &Tenant,
        producer: &ProducerId,
        epoch: u64,
        seq: u64,
        why: Unsettled,
    ) -> Result<(), ValkeyError> {
        let op = match why {
            Unsettled::NotWritten => "release",
            Unsettled::Unknown => "unknown",
        };
        let _: i64 = self
            .invocation(tenant, producer, op)
            .arg(epoch)
            .arg(seq)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Starts a new epoch for `producer`, fencing off every older one. `None` until the
    /// tenant's states were rebuilt.
    pub async fn bump_epoch(
        &self,
        tenant: &Tenant,
        producer: &ProducerId,
    ) -> Result<Option<u64>, ValkeyError> {
        let reply: Vec<String> = self
            .invocation(tenant, producer, "bump")
            .invoke_async(&mut self.conn.clone())
            .await?;
        match reply.first().map(String::as_str) {
            Some("not_ready") => Ok(None),
            Some("epoch") => number(&reply, "epoch").map(Some),
            _ => Err(ValkeyError::Reply(format!("producer bump: {reply:?}"))),
        }
    }

    /// Merges a state read from the log (never lowers an epoch or a next sequence).
    pub async fn restore(
        &self,
        tenant: &Tenant,
        producer: &ProducerId,
        state: &Restored,
    ) -> Result<(), ValkeyError> {
        let mut call = self.invocation(tenant, producer, "restore");
        call.arg(state.epoch).arg(state.next);
        for (seq, outcome) in &state.outcomes {
            call.arg(*seq).arg(outcome.encode());
        }
        let _: i64 = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Makes the producer's state agree with the log's (a replay drill's rebuild): like
    /// [`ProducerStore::restore`], and the log's outcomes also replace different ones.
    /// `false` when a newer epoch holds the state.
    pub async fn repair(
        &self,
        tenant: &Tenant,
        producer: &ProducerId,
        state: &Restored,
    ) -> Result<bool, ValkeyError> {
        let mut call = self.invocation(tenant, producer, "repair");
        call.arg(state.epoch).arg(state.next);
        for (seq, outcome) in &state.outcomes {
            call.arg(*seq).arg(outcome.encode());
        }
        let done: i64 = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(done == 1)
    }

    /// The producer's state as stored, `None` when there is none.
    pub async fn stored(
        &self,
        tenant: &Tenant,
        producer: &ProducerId,
    ) -> Result<Option<StoredProducer>, ValkeyError> {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::producer(tenant, producer))
            .query_async(&mut self.conn.clone())
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let num = |name: &str| fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut outcomes = std::collections::BTreeMap::new();
        for (field, value) in &fields {
            if let Some(seq) = field.strip_prefix("s:").and_then(|s| s.parse().ok()) {
                let state = match Outcome::decode(value) {
                    Ok(outcome) => StoredOutcome::Written(outcome),
                    Err(_) if value == "f" => StoredOutcome::NotWritten,
                    Err(_) => StoredOutcome::InFlight,
                };
                outcomes.insert(seq, state);
            }
        }
        Ok(Some(StoredProducer {
            epoch: num("epoch"),
            next: num("next"),
            outcomes,
        }))
    }

    /// Whether the tenant's states were rebuilt since Valkey started empty.
    pub async fn is_ready(&self, tenant: &Tenant) -> Result<bool, ValkeyError> {
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys::producers_ready(tenant))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(exists)
    }

    /// Marks the tenant's states as rebuilt.
    pub async fn mark_ready(&self, tenant: &Tenant) -> Result<(), ValkeyError> {
        let _: () = redis::cmd("SET")
            .arg(keys::producers_ready(tenant))
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Takes the tenant's rebuild lock for `hold`; `false` when another gateway holds it.
    pub async fn lock_rebuild(&self, tenant: &Tenant, hold: Duration) -> Result<bool, ValkeyError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(keys::producers_rebuild_lock(tenant))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(millis(hold))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(taken.is_some())
    }

    pub async fn unlock_rebuild(&self, tenant: &Tenant) -> Result<(), ValkeyError> {
        let _: i64 = redis::cmd("DEL")
            .arg(keys::producers_rebuild_lock(tenant))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_reject_garbage() {
        let o = Outcome {
            partition: 3,
            offset: Offset(42),
        };
        assert_eq!(Outcome::decode(&o.encode()).expect("decodes"), o);
        assert!(Outcome::decode("p:123").is_err());
        assert!(Outcome::decode("7").is_err());
    }
}
