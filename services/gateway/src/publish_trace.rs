//! The publish spans: one `publish` span per event (SERVER: the gateway receiving it, with
//! its dedupe and quota decisions) and, under it, one `send <topic>` span (PRODUCER: the
//! Kafka append) whose context travels on in the record's headers.

use agentwire_protocol::Event;
use agentwire_runtime::trace::{self, TraceHeaders, semconv};
use tracing::field::Empty;

use crate::error::ApiError;
use crate::publish::Transport;

/// The trace context an event arrived with: its distributed-tracing attributes (filled from
/// the HTTP request's `traceparent` when it had none).
pub fn incoming(event: &Event) -> Option<TraceHeaders> {
    TraceHeaders::from_parts(event.traceparent.as_deref(), event.tracestate.as_deref())
}

/// The span of one event's publish, parented to the context it arrived with.
pub fn publish_span(
    event: &Event,
    transport: Transport,
    incoming: Option<&TraceHeaders>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.kind = "server",
        otel.status_code = Empty,
        agentwire.transport = transport.label(),
        agentwire.tenant = %event.session.tenant,
        agentwire.session = %event.session,
        agentwire.producer_id = event.producer_id.as_ref().map(|p| p.as_str()),
        agentwire.producer_seq = event.producer_seq.map(trace::int),
        agentwire.publish.outcome = Empty,
        cloudevents.event_id = Empty,
        cloudevents.event_type = %event.event_type,
        error.type = Empty,
    );
    trace::set_parent(&span, incoming);
    span
}

/// The Kafka append of one event, a child of its publish span.
pub fn send_span(publish: &tracing::Span, topic: &str, event: &Event) -> tracing::Span {
    let span = tracing::info_span!(
        parent: publish,
        "send",
        otel.name = format!("send {topic}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        { semconv::MESSAGING_SYSTEM } = "kafka",
        { semconv::MESSAGING_OPERATION_TYPE } = "send",
        { semconv::MESSAGING_OPERATION_NAME } = "send",
        { semconv::MESSAGING_DESTINATION_NAME } = topic,
        { semconv::MESSAGING_KAFKA_MESSAGE_KEY } = %event.session,
        { semconv::MESSAGING_MESSAGE_ID } = Empty,
        { semconv::MESSAGING_DESTINATION_PARTITION_ID } = Empty,
        { semconv::MESSAGING_KAFKA_OFFSET } = Empty,
        agentwire.tenant = %event.session.tenant,
        agentwire.session = %event.session,
        error.type = Empty,
    );
    span
}

/// Records how a publish ended on its span: `ok`, `duplicate` (answered from the producer
/// state), or the error's code (`rate_limited` for a quota refusal, …).
pub fn record_outcome(span: &tracing::Span, outcome: Result<&'static str, &ApiError>) {
    match outcome {
        Ok(outcome) => {
            span.record("agentwire.publish.outcome", outcome);
        }
        Err(err) => {
            span.record("agentwire.publish.outcome", "refused");
            span.record("error.type", err.code.as_str());
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// A publish refused before it reached the publish path (a rate limit or quota): its span,
/// ended at once with the refusal.
pub fn refused(event: &Event, transport: Transport, err: &ApiError) {
    let span = publish_span(event, transport, incoming(event).as_ref());
    record_outcome(&span, Err(err));
}

/// The trace id a publish answer names: the publish span's when traces are on, else the
/// event's own context's, if it has one.
pub fn trace_id(span: &tracing::Span, incoming: Option<&TraceHeaders>) -> Option<String> {
    trace::outgoing(span, incoming).map(|h| h.trace_id())
}
