//! The enricher's spans. A batch gets one `enrich batch` span, linked to each event it holds
//! (the events belong to many traces), with the model's `inference` as its child. Each event
//! gets an `enrich` span in its own trace (CONSUMER, the child of the append that wrote it,
//! linked to the batch) and, under it, the `send <enriched topic>` span of its annotation
//! (PRODUCER), whose context travels on in the annotation's record headers.

use agentwire_kafka::LogMessage;
use agentwire_runtime::trace::{self, TraceHeaders, semconv};
use tracing::field::Empty;

/// The trace context a record arrived with.
pub fn incoming(message: &LogMessage) -> Option<TraceHeaders> {
    TraceHeaders::from_parts(
        message.traceparent.as_deref(),
        message.tracestate.as_deref(),
    )
}

/// The span of one inference batch, linked to every event in it.
pub fn batch_span<'a>(
    events: impl Iterator<Item = Option<&'a TraceHeaders>>,
    size: usize,
    device: &str,
) -> tracing::Span {
    let span = tracing::info_span!(
        "enrich batch",
        { semconv::MESSAGING_BATCH_MESSAGE_COUNT } = trace::int(size),
        agentwire.enricher.device = device,
    );
    for headers in events.flatten() {
        trace::add_link(&span, headers);
    }
    span
}

/// The model's forward pass over a batch, a child of the batch span.
pub fn inference_span(batch: &tracing::Span, size: usize) -> tracing::Span {
    tracing::info_span!(parent: batch, "inference", agentwire.enricher.batch_size = trace::int(size))
}

/// The enrichment of one event, in the event's trace.
pub fn event_span(
    parent: Option<&TraceHeaders>,
    batch: &tracing::Span,
    topic: &str,
    group: &str,
    session: &str,
    offset: u64,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "enrich",
        otel.name = format!("enrich {topic}"),
        otel.kind = "consumer",
        { semconv::MESSAGING_SYSTEM } = "kafka",
        { semconv::MESSAGING_OPERATION_TYPE } = "process",
        { semconv::MESSAGING_OPERATION_NAME } = "enrich",
        { semconv::MESSAGING_DESTINATION_NAME } = topic,
        { semconv::MESSAGING_CONSUMER_GROUP_NAME } = group,
        { semconv::MESSAGING_KAFKA_OFFSET } = trace::int(offset),
        agentwire.session = session,
        agentwire.enricher.batch_trace_id = Empty,
    );
    trace::set_parent(&span, parent);
    if let Some(batch) = trace::outgoing(batch, None) {
        trace::add_link(&span, &batch);
        // Also as an attribute: trace stores that drop links (Phoenix) still lead to the batch.
        span.record("agentwire.enricher.batch_trace_id", batch.trace_id());
    }
    span
}

/// The append of one annotation to `topic`, a child of its event's `enrich` span, with the
/// labels it carries.
pub fn send_span(event: &tracing::Span, topic: &str, session: &str, labels: &str) -> tracing::Span {
    tracing::info_span!(
        parent: event,
        "send",
        otel.name = format!("send {topic}"),
        otel.kind = "producer",
        { semconv::MESSAGING_SYSTEM } = "kafka",
        { semconv::MESSAGING_OPERATION_TYPE } = "send",
        { semconv::MESSAGING_OPERATION_NAME } = "send",
        { semconv::MESSAGING_DESTINATION_NAME } = topic,
        { semconv::MESSAGING_KAFKA_MESSAGE_KEY } = session,
        agentwire.session = session,
        agentwire.labels = labels,
    )
}
