//! The enricher's metric names, in one place.

/// Events per inference batch.
pub const BATCH_SIZE: &str = "agentwire_enricher_batch_size";
/// Seconds per inference batch (tokenise + forward + labels).
pub const BATCH_SECONDS: &str = "agentwire_enricher_batch_seconds";
/// Embeddings computed.
pub const EMBEDDINGS: &str = "agentwire_enricher_embeddings_total";
/// Embeddings per second over the last batch.
pub const EMBEDDINGS_PER_SECOND: &str = "agentwire_enricher_embeddings_per_second";
/// Records read but not enriched, by reason (`no_text`, `not_an_event`, …).
pub const SKIPPED: &str = "agentwire_enricher_records_skipped_total";
/// Records behind the end of the log, per partition, after each batch.
pub const CONSUMER_LAG: &str = "agentwire_enricher_consumer_lag";
/// 1 while a hardware GPU adapter runs the model, else 0.
pub const GPU_ACTIVE: &str = "agentwire_enricher_gpu_active";
/// Failed writes to the enriched topic (each is retried).
pub const PUBLISH_ERRORS: &str = "agentwire_enricher_publish_errors_total";
