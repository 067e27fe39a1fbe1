//! The relay's metric names, in one place.

/// Events written to Valkey for the first time.
pub const EVENTS_WRITTEN: &str = "agentwire_relay_events_written_total";
/// Events that were already in Valkey (a replay after a restart or rebalance).
pub const EVENTS_REPLAYED: &str = "agentwire_relay_events_replayed_total";
/// Records that are not agentwire events and were skipped, by reason.
pub const RECORDS_SKIPPED: &str = "agentwire_relay_records_skipped_total";
/// Records per Valkey pipeline.
pub const BATCH_SIZE: &str = "agentwire_relay_batch_size";
/// Seconds per Valkey pipeline write.
pub const BATCH_SECONDS: &str = "agentwire_relay_batch_seconds";
/// Failed Valkey writes (each is retried).
pub const VALKEY_ERRORS: &str = "agentwire_relay_valkey_errors_total";
/// Enrichment annotations, by outcome (`after_event`, `event_not_seen`, `replay_skipped`).
pub const ANNOTATIONS: &str = "agentwire_relay_annotations_total";
