//! Every Valkey key and channel name agentwire uses, built here and nowhere else.
//!
//! Each name carries the session's hash tag `{tenant:agent_type:session_id}`, so a session's
//! history, state and channel live in one Valkey Cluster slot and one server-side script
//! touches one slot. History entries use the id `<kafka offset>-1`: stream ids must be above
//! `0-0`, and the sequence part is constant, so ordering by id is ordering by offset.

use agentwire_protocol::{Offset, ProducerId, SessionKey, Tenant};

const PREFIX: &str = "aw:";

/// The stream holding a session's recent events (its history window).
pub fn history(session: &SessionKey) -> String {
    format!("{PREFIX}{{{session}}}:h")
}

/// A session's window being rebuilt from the log by a replay drill, swapped in when complete.
pub fn history_rebuild(session: &SessionKey) -> String {
    format!("{PREFIX}{{{session}}}:h:rebuild")
}

/// The pub/sub channel announcing a session's new events.
pub fn channel(session: &SessionKey) -> String {
    format!("{PREFIX}{{{session}}}:ch")
}

/// The session's annotation marks: a hash of enrichment version → the highest source offset
/// whose enrichment of that version was announced on the session's channel
/// (`lua/annotate.lua`; a string, the one mark, before versions).
pub fn annotated(session: &SessionKey) -> String {
    format!("{PREFIX}{{{session}}}:enr")
}

/// The pub/sub channel of a tenant's label feed (semantic routing of enrichments).
pub fn label_channel(tenant: &Tenant, label: &str) -> String {
    format!("{PREFIX}label:{{{tenant}}}:{label}")
}

/// A tenant's publish-rate bucket (GCRA theoretical arrival time).
pub fn tenant_rate(tenant: &Tenant) -> String {
    format!("{PREFIX}tenant:{{{tenant}}}:rate")
}

/// A tenant's GCRA bucket for records scanned by history reads from the log.
pub fn tenant_scan_rate(tenant: &Tenant) -> String {
    format!("{PREFIX}tenant:{{{tenant}}}:scan-rate")
}

/// A producer's sequence state (epoch, next sequence, recent outcomes) for idempotent publishing.
pub fn producer(tenant: &Tenant, producer: &ProducerId) -> String {
    format!("{PREFIX}tenant:{{{tenant}}}:producer:{producer}")
}

/// Present once the tenant's producer states were rebuilt from the log since Valkey started
/// empty; sequenced publishes wait for it.
pub fn producers_ready(tenant: &Tenant) -> String {
    format!("{PREFIX}tenant:{{{tenant}}}:producers-ready")
}

/// Held by the one gateway rebuilding a tenant's producer states from the log.
pub fn producers_rebuild_lock(tenant: &Tenant) -> String {
    format!("{PREFIX}tenant:{{{tenant}}}:producers-rebuild")
}

/// The set of a tenant's task capabilities; every key of the tenant's work queue is named from
/// it (`lua/tasks.lua`) and shares its hash tag `{tenant}` (the tenant's slot).
pub fn task_caps(tenant: &Tenant) -> String {
    format!("{PREFIX}tq:{{{tenant}}}:caps")
}

/// The channel announcing that a task of the tenant became ready (the message is its
/// capability).
pub fn task_wake(tenant: &Tenant) -> String {
    format!("{PREFIX}tq:{{{tenant}}}:wake")
}

/// The tenant a task wake channel belongs to.
pub fn tenant_of_task_wake(channel: &str) -> Option<Tenant> {
    let rest = channel.strip_prefix(PREFIX)?.strip_prefix("tq:{")?;
    let tenant = rest.strip_suffix("}:wake")?;
    Tenant::new(tenant).ok()
}

/// Present while Valkey holds the work queues of the task topic `topic` as the log says
/// (set by a rebuild from the log, or on a first start with nothing to rebuild). Gone after
/// Valkey lost its data: the relay then rebuilds the queues before it applies another
/// record, so an old `enqueued` record never brings back a task that finished.
pub fn task_queues_intact(topic: &str) -> String {
    format!("{PREFIX}tq:intact:{topic}")
}

/// Every tenant that has had a task recorded in `topic` (the lease sweeper's list: a
/// gateway sweeps the tenants of its own task topic, whose records it appends).
pub fn task_tenants(topic: &str) -> String {
    format!("{PREFIX}tq:tenants:{topic}")
}

/// A session's state hash (`lua/session_state.lua`), on the session's slot.
pub fn session_state(session: &SessionKey) -> String {
    format!("{PREFIX}{{{session}}}:state")
}

/// The expiry set of a tenant's agent registry; every key of the registry is named from it
/// (`lua/registry.lua`) and shares its hash tag `{tenant}` (the tenant's slot).
pub fn registry_expiry(tenant: &Tenant) -> String {
    format!("{PREFIX}reg:{{{tenant}}}:exp")
}

/// Every tenant that has registered an agent through a gateway of the log topic `topic`
/// (the registry sweeper's list: a gateway records the expiries of its own topic).
pub fn registry_tenants(topic: &str) -> String {
    format!("{PREFIX}reg:tenants:{topic}")
}

/// The relay's mark of one partition of its source topic: the highest offset it appended
/// (`through`) and where a Valkey rollback was last found (`floor`, see `lua/append.lua`).
///
/// The append script touches it together with a session's stream. A standalone Valkey has
/// one mark per partition (`slot` `None`); on a cluster, where a script touches one slot only,
/// there is one mark per partition and slot, hash-tagged into that slot.
/// A remembered record of a log partition (see `probes.rs`): how the relay notices that the
/// log was reset under this Valkey.
pub fn log_probe(topic: &str, partition: i32) -> String {
    format!("{PREFIX}probe:{topic}:{partition}")
}

pub fn relay_mark(topic: &str, partition: i32, slot: Option<u16>) -> String {
    match slot {
        None => format!("{PREFIX}relay:{topic}:{partition}"),
        Some(slot) => format!(
            "{PREFIX}relay:{{{}}}:{topic}:{partition}",
            crate::connection::slot_tag(slot)
        ),
    }
}

/// The session a channel name belongs to, if it is one of ours.
pub fn session_of_channel(channel: &str) -> Option<SessionKey> {
    let tagged = channel.strip_prefix("aw:{")?.strip_suffix("}:ch")?;
    tagged.parse().ok()
}

/// The stream entry id for a Kafka offset.
pub fn entry_id(offset: Offset) -> String {
    format!("{offset}-1")
}

/// The Kafka offset an entry id encodes; `None` for ids we did not write (e.g. `0-0`).
pub fn offset_of_entry_id(id: &str) -> Option<Offset> {
    let (ms, seq) = id.split_once('-')?;
    if seq != "1" {
        return None;
    }
    ms.parse().ok().map(Offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_session_hash_tag() {
        let s: SessionKey = "acme:planner:s1".parse().expect("key");
        assert_eq!(history(&s), "aw:{acme:planner:s1}:h");
        assert_eq!(channel(&s), "aw:{acme:planner:s1}:ch");
        assert_eq!(session_of_channel(&channel(&s)), Some(s));
        assert_eq!(session_of_channel("other"), None);
    }

    #[test]
    fn a_cluster_mark_lives_in_its_sessions_slot() {
        let s: SessionKey = "acme:planner:s1".parse().expect("key");
        let slot = crate::connection::slot(&history(&s));
        let mark = relay_mark("agent.events", 3, Some(slot));
        assert_eq!(crate::connection::slot(&mark), slot);
        assert_eq!(
            relay_mark("agent.events", 3, None),
            "aw:relay:agent.events:3"
        );
    }

    #[test]
    fn entry_ids_encode_offsets_including_zero() {
        for o in [0, 1, 42, u64::MAX] {
            assert_eq!(offset_of_entry_id(&entry_id(Offset(o))), Some(Offset(o)));
        }
        assert_eq!(offset_of_entry_id("0-0"), None);
        assert_eq!(offset_of_entry_id("garbage"), None);
    }
}
