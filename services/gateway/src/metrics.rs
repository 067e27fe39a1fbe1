//! The gateway's metric names, in one place.

/// Open WebSocket connections.
pub const CONNECTIONS: &str = "agentwire_gateway_ws_connections";
/// Events appended to Kafka, by transport (`http`, `ws`) and outcome (`ok`, `error`).
pub const PUBLISHES: &str = "agentwire_gateway_publishes_total";
/// Seconds from receiving a publish to Kafka's acknowledgement.
pub const PUBLISH_SECONDS: &str = "agentwire_gateway_publish_seconds";
/// Seconds from an event's (or a session annotation's) append to the log until this gateway
/// handed it to its connections, by `kind` (`event`, `annotation`): a histogram.
pub const DELIVERY_LATENCY_SECONDS: &str = "agentwire_gateway_delivery_latency_seconds";
/// Events delivered to WebSocket clients.
pub const DELIVERIES: &str = "agentwire_gateway_deliveries_total";
/// Label-feed annotations shed because a connection's mailbox was full.
pub const LABEL_FEED_SKIPPED: &str = "agentwire_gateway_label_feed_skipped_total";
/// Session annotations (enrichments) shed because a connection's mailbox was full.
pub const ANNOTATIONS_SHED: &str = "agentwire_gateway_annotations_shed_total";
/// Enrichment annotations sent to clients.
pub const ANNOTATIONS: &str = "agentwire_gateway_annotations_total";
/// Catch-up reads from history, by reason (`subscribe`, `lagged`, `resync`).
pub const CATCH_UPS: &str = "agentwire_gateway_catch_ups_total";
/// Sessions this gateway holds a Valkey subscription for.
pub const LIVE_SESSIONS: &str = "agentwire_gateway_live_sessions";
/// Reconnections of the shared Valkey subscription connection.
pub const FEED_RECONNECTS: &str = "agentwire_gateway_feed_reconnects_total";
/// Error frames and error responses sent, by code.
pub const ERRORS: &str = "agentwire_gateway_errors_total";
/// History reads that had to go to Kafka (the window could not prove it held the range).
pub const LOG_READS: &str = "agentwire_gateway_history_log_reads_total";
/// Records history reads examined in the log, of any session.
pub const LOG_RECORDS_SCANNED: &str = "agentwire_gateway_history_log_records_scanned_total";
/// History reads refused because the tenant was over its log-scan quota.
pub const LOG_SCANS_LIMITED: &str = "agentwire_gateway_history_log_scans_limited_total";
/// Connections closed because the client stopped answering (no message within the idle
/// timeout, or a send that could not complete within it).
pub const REAPED: &str = "agentwire_gateway_ws_reaped_total";
/// Catch-up reads that failed (Valkey or Kafka unreachable) and were retried.
pub const CATCH_UP_RETRIES: &str = "agentwire_gateway_catch_up_retries_total";
/// Events refused because their tenant was over its quota.
pub const TENANT_LIMITED: &str = "agentwire_gateway_tenant_limited_total";
/// Tenant quota checks that could not reach Valkey (the publish was allowed).
pub const TENANT_LIMITER_ERRORS: &str = "agentwire_gateway_tenant_limiter_errors_total";
/// Publishes answered with the original ack of an already accepted producer sequence.
pub const DUPLICATE_PUBLISHES: &str = "agentwire_gateway_duplicate_publishes_total";
/// Tenants whose producer states were rebuilt from the log (Valkey had lost them).
pub const PRODUCER_REBUILDS: &str = "agentwire_gateway_producer_rebuilds_total";
/// Abandoned appends (their gateway died before recording the outcome) taken over by a retry.
pub const PRODUCER_TAKEOVERS: &str = "agentwire_gateway_producer_takeovers_total";
/// Ephemeral messages published through this gateway.
pub const EPHEMERAL_PUBLISHED: &str = "agentwire_gateway_ephemeral_published_total";
/// Ephemeral messages sent to clients.
pub const EPHEMERAL_DELIVERED: &str = "agentwire_gateway_ephemeral_delivered_total";
/// Ephemeral messages shed (never sent) by reason: `lagged` (the reader fell more than
/// `AGENTWIRE_EPHEMERAL_BUFFER` behind) or `catching_up` (its durable feed is in catch-up).
pub const EPHEMERAL_SHED: &str = "agentwire_gateway_ephemeral_shed_total";
/// WebSocket connections closed because their token expired (close 4001).
pub const TOKEN_EXPIRED: &str = "agentwire_gateway_token_expired_total";
/// Follows a refreshed token no longer allowed, ended with a `forbidden` frame.
pub const FOLLOWS_REVOKED: &str = "agentwire_gateway_follows_revoked_total";
/// Label-feed annotations not delivered because the token may not follow their session.
pub const LABEL_FEED_FILTERED: &str = "agentwire_gateway_label_feed_filtered_total";
/// Live publications on a session channel that contradict the session's window (forged or
/// corrupt), dropped, by reason.
pub const LIVE_FORGED: &str = "agentwire_gateway_live_forged_total";
/// HTTP connections being served (upgraded WebSockets are counted in `CONNECTIONS` instead).
pub const HTTP_CONNECTIONS: &str = "agentwire_gateway_http_connections";
/// Times the server reached `AGENTWIRE_MAX_HTTP_CONNECTIONS` and stopped accepting.
pub const HTTP_CONNECTIONS_AT_CAP: &str = "agentwire_gateway_http_connections_at_cap_total";
/// Task transitions recorded to `agent.tasks`, by `kind` (`enqueued`, `claimed`, …).
pub const TASK_TRANSITIONS: &str = "agentwire_gateway_task_transitions_total";
/// Enqueues answered with the task an idempotency key named first.
pub const TASK_DUPLICATES: &str = "agentwire_gateway_task_duplicates_total";
/// Seconds a claim took (script and records), by the gateway that served it.
pub const TASK_CLAIM_SECONDS: &str = "agentwire_gateway_task_claim_seconds";
/// Tasks handed out again after an earlier attempt (expired lease, retry, release).
pub const TASK_REDELIVERIES: &str = "agentwire_gateway_task_redeliveries_total";
/// The attempt number of each task handed out (a histogram).
pub const TASK_ATTEMPTS: &str = "agentwire_gateway_task_attempts";
/// Tasks per tenant, capability and `state` (`ready`, `delayed`, `in_flight`, `dead`), as
/// last read by a queue-stats request.
pub const TASK_QUEUE_DEPTH: &str = "agentwire_gateway_task_queue_depth";
/// Transitions per record appended to `agent.tasks` (group commit): a histogram.
pub const TASK_COMMIT_SIZE: &str = "agentwire_gateway_task_commit_size";
/// Registry changes recorded in the log, by `kind` (`joined`, `updated`, `left`, `expired`).
pub const REGISTRY_EVENTS: &str = "agentwire_gateway_registry_events_total";
/// Registry changes (a leave, an expiry) Valkey made but the log did not take.
pub const REGISTRY_UNRECORDED: &str = "agentwire_gateway_registry_unrecorded_total";
/// Session state changes recorded in the log (`agent.session.state`).
pub const STATE_CHANGES: &str = "agentwire_gateway_session_state_changes_total";
