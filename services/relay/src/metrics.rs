//! The relay's metric names, in one place.

/// Events written to Valkey for the first time.
pub const EVENTS_WRITTEN: &str = "agentwire_relay_events_written_total";
/// Events that were already in Valkey (a replay after a restart or rebalance).
pub const EVENTS_REPLAYED: &str = "agentwire_relay_events_replayed_total";
/// Records of a session that are not valid events of it, stored as gap events, by reason
/// (`empty`, `not_utf8`, `not_an_event`, `key_mismatch`).
pub const RECORDS_UNREADABLE: &str = "agentwire_relay_unreadable_records_total";
/// Records without a session key: no session can receive them.
pub const RECORDS_UNROUTABLE: &str = "agentwire_relay_unroutable_records_total";
/// Records per Valkey pipeline.
pub const BATCH_SIZE: &str = "agentwire_relay_batch_size";
/// Seconds per Valkey pipeline write.
pub const BATCH_SECONDS: &str = "agentwire_relay_batch_seconds";
/// Failed Valkey writes (each is retried).
pub const VALKEY_ERRORS: &str = "agentwire_relay_valkey_errors_total";
/// Enrichment annotations, by outcome (`after_event`, `event_not_seen`, `replay_skipped`).
pub const ANNOTATIONS: &str = "agentwire_relay_annotations_total";
/// Appends that found Valkey had lost appends it acknowledged (a snapshot restore, a lagging
/// replica promoted); see `lua/append.lua`.
pub const VALKEY_ROLLBACKS: &str = "agentwire_relay_valkey_rollbacks_total";
/// Records not relayed because their session's window holds another record at their offset:
/// the log topic was reset under this Valkey.
pub const LOG_MISMATCHES: &str = "agentwire_relay_log_mismatches_total";
/// Log resets found by the probe watch (the relay stops at each).
pub const LOG_RESETS: &str = "agentwire_relay_log_resets_total";
/// Probes of log partitions taken (a record remembered to notice a reset).
pub const LOG_PROBES_TAKEN: &str = "agentwire_relay_log_probes_taken_total";
/// `agent.enriched` records that are not enrichments (annotations are realtime extras: skipped).
pub const ENRICHMENTS_SKIPPED: &str = "agentwire_relay_enrichments_skipped_total";
/// Records of `agent.tasks` the task carrier handled, by `how` (`applied`, `stale`: Valkey
/// had that version already, `unknown_task`, `absent`: a task unknown to Valkey the carrier
/// may not create (it rebuilt the queues first), `duplicate`: a second task under a taken
/// idempotency key, `skipped`: not a task record).
pub const TASK_RECORDS: &str = "agentwire_relay_task_records_total";
/// Rebuilds of the task queues from the log, made by the task carrier after it found that
/// Valkey had lost them.
pub const TASK_REBUILDS: &str = "agentwire_relay_task_rebuilds_total";
/// Session states put back into Valkey from the log (Valkey's was older or gone).
pub const STATES_RESTORED: &str = "agentwire_relay_session_states_restored_total";
