//! The only crate that names redis: Valkey keys and channels (built in `keys`), the
//! server-side scripts, the per-session history window and the live announcement feed.
//!
//! Valkey is a cache of the Kafka log, never its own truth: every entry is keyed by the
//! Kafka offset it came from, and everything here can be rebuilt by replaying the log.

mod args;
mod connection;
mod error;
mod history;
pub mod keys;
mod limits;
mod live;
mod probes;
mod producer_log;
mod producers;
mod registry;
mod session_state;
mod tasks;
mod window_repair;

pub use args::ValkeyArgs;
pub use connection::{Connection, SLOTS, ValkeyUrl, slot, slot_tag};
pub use error::ValkeyError;
pub use history::{
    Annotated, Annotation, Append, Appended, Gap, HistorySettings, HistoryStore, Link, LiveCheck,
    UNVERSIONED_MARK, Window,
};
pub use limits::{TenantLimiter, TenantQuota};
pub use live::{
    Announcement, LiveAnnotation, LiveEphemeral, LiveMessage, LiveMeta, LiveStream,
    LiveSubscriptions, connect as connect_live, ephemeral_message, parse_label_message,
    parse_message,
};
pub use probes::{LogProbes, Probe as LogProbe};
pub use producer_log::Accumulator;
pub use producers::{
    Outcome, ProducerSettings, ProducerStore, Reserve, Restored, StoredOutcome, StoredProducer,
    Unsettled,
};
pub use registry::{Deregistered, RegisterKind, Registered, RegistryStore};
pub use session_state::{SessionStateStore, Updated};
pub use tasks::{
    Applied, Claim, ClaimedTask, Enqueued, LeaseOutcome, QueueStats, TaskStore, Transition,
};
pub use window_repair::{StoredEntry, WindowSlice};
