//! What the fanout records of each durable publication it hands out: one `deliver` span per
//! publication per gateway (CONSUMER, the child of the relay's span, with the number of
//! connections it reached; never one span per connection), and the publish→deliver latency.

use std::time::{SystemTime, UNIX_EPOCH};

use agentwire_runtime::trace::{self, TraceHeaders, semconv};
use tracing::field::Empty;

use super::publication::{Kind, Publication};
use crate::metrics as m;

/// The span of handing `publication` to this gateway's connections, when its announcement
/// carries a trace context (none for ephemeral messages, which have no log record).
pub fn deliver_span(publication: &Publication) -> Option<tracing::Span> {
    let parent = TraceHeaders::from_parts(publication.meta.traceparent.as_deref(), None)?;
    let (kind, offset) = match publication.kind {
        Kind::Event(o) => ("event", o),
        Kind::Annotation(o) => ("annotation", o),
        Kind::Labelled(o) => ("label", o),
        Kind::Ephemeral => return None,
    };
    let span = tracing::info_span!(
        "deliver",
        otel.kind = "consumer",
        { semconv::MESSAGING_SYSTEM } = "agentwire",
        { semconv::MESSAGING_OPERATION_TYPE } = "process",
        { semconv::MESSAGING_OPERATION_NAME } = "deliver",
        { semconv::MESSAGING_KAFKA_OFFSET } = trace::int(offset.0),
        agentwire.session = %publication.session,
        agentwire.publication = kind,
        agentwire.connections = Empty,
        agentwire.lagged = Empty,
        agentwire.shed = Empty,
    );
    trace::set_parent(&span, Some(&parent));
    Some(span)
}

/// Seconds from the record's append to now, recorded for events and session annotations
/// (once per gateway, when the fanout hands it out).
pub fn record_latency(publication: &Publication) {
    let kind = match publication.kind {
        Kind::Event(_) => "event",
        Kind::Annotation(_) => "annotation",
        Kind::Labelled(_) | Kind::Ephemeral => return,
    };
    let Some(appended) = publication.meta.appended_ms else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(appended);
    let seconds = (now - appended).max(0) as f64 / 1000.0;
    metrics::histogram!(m::DELIVERY_LATENCY_SECONDS, "kind" => kind).record(seconds);
}
