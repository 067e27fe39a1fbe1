//! The relay's spans: one `process <topic>` span per record (CONSUMER, the child of the
//! append that wrote it, read from the record's headers), and one `valkey append` span per
//! Valkey pipeline, linked to the records it carried. The record span's context travels on
//! to the gateways in the announcement ([`agentwire_valkey::LiveMeta`]).

use agentwire_kafka::LogMessage;
use agentwire_runtime::trace::{self, TraceHeaders, semconv};
use agentwire_valkey::LiveMeta;
use tracing::field::Empty;

/// The span of relaying one record of `topic`, read by consumer group `group`, and what its
/// announcement carries ([`LiveMeta::encode`]): the span's context (or, untraced, the
/// record's own) and the record's timestamp.
pub fn record(
    message: &LogMessage,
    topic: &str,
    group: &str,
    session: &str,
) -> (tracing::Span, String) {
    let incoming = TraceHeaders::from_parts(
        message.traceparent.as_deref(),
        message.tracestate.as_deref(),
    );
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {topic}"),
        otel.kind = "consumer",
        { semconv::MESSAGING_SYSTEM } = "kafka",
        { semconv::MESSAGING_OPERATION_TYPE } = "process",
        { semconv::MESSAGING_OPERATION_NAME } = "process",
        { semconv::MESSAGING_DESTINATION_NAME } = topic,
        { semconv::MESSAGING_CONSUMER_GROUP_NAME } = group,
        { semconv::MESSAGING_DESTINATION_PARTITION_ID } = message.partition.to_string(),
        { semconv::MESSAGING_KAFKA_OFFSET } = trace::int(message.offset.0),
        agentwire.session = session,
        agentwire.relay.outcome = Empty,
    );
    trace::set_parent(&span, incoming.as_ref());
    let meta = LiveMeta {
        traceparent: trace::outgoing(&span, incoming.as_ref()).map(|h| h.traceparent),
        appended_ms: message.timestamp_ms,
    }
    .encode();
    (span, meta)
}

/// The span of one Valkey pipeline of `records` appends.
pub fn valkey_span(records: usize) -> tracing::Span {
    tracing::info_span!(
        "valkey append",
        otel.kind = "client",
        db.system.name = "valkey",
        db.operation.name = "EVALSHA append",
        { semconv::MESSAGING_BATCH_MESSAGE_COUNT } = trace::int(records),
        agentwire.relay.written = Empty,
    )
}
