//! W3C trace context across agentwire's hops: from the HTTP header or the event's
//! distributed-tracing attributes, into Kafka record headers, into the Valkey announcement
//! the gateways receive, into `agent.enriched`, and back to the producer.
//!
//! A span is made the child of the context that came in ([`set_parent`]); what goes out is
//! the span's own context ([`outgoing`]). When traces are off the span has no context of its
//! own and the incoming one passes through unchanged, so a caller's trace still reaches the
//! log and the services after this one.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The semantic-convention attribute names (`messaging.system`, …).
pub use opentelemetry_semantic_conventions::attribute as semconv;

/// The W3C `traceparent` header (and message header) name.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` header (and message header) name.
pub const TRACESTATE: &str = "tracestate";

/// A W3C trace context as it travels: `traceparent` and, when there is one, `tracestate`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// The context of `traceparent` (and `tracestate`), when they are valid.
    pub fn from_parts(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let headers = TraceHeaders {
            traceparent: traceparent?.to_owned(),
            tracestate: tracestate.filter(|s| !s.is_empty()).map(str::to_owned),
        };
        headers.span_context().is_valid().then_some(headers)
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.span_context().trace_id().to_string()
    }

    fn context(&self) -> opentelemetry::Context {
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert(TRACEPARENT.to_owned(), self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            carrier.insert(TRACESTATE.to_owned(), state.clone());
        }
        TraceContextPropagator::new().extract(&carrier)
    }

    fn span_context(&self) -> SpanContext {
        self.context().span().span_context().clone()
    }

    fn of(cx: &opentelemetry::Context) -> Option<Self> {
        let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        Some(TraceHeaders {
            traceparent: carrier.remove(TRACEPARENT)?,
            tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
        })
    }
}

/// Makes `span` a child of `parent` (nothing when there is none, or when traces are off).
pub fn set_parent(span: &tracing::Span, parent: Option<&TraceHeaders>) {
    if let Some(parent) = parent {
        // Fails only for a span already started, which a caller never passes.
        let _ = span.set_parent(parent.context());
    }
}

/// Links `span` to the context of another trace (a batch span to each of its events).
pub fn add_link(span: &tracing::Span, to: &TraceHeaders) {
    let cx = to.span_context();
    if cx.is_valid() {
        span.add_link(cx);
    }
}

/// The context to send onwards from `span`: its own while traces are on, else `incoming`.
pub fn outgoing(span: &tracing::Span, incoming: Option<&TraceHeaders>) -> Option<TraceHeaders> {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceHeaders::of(&cx)
    } else {
        incoming.cloned()
    }
}

/// A count or offset as a span attribute: OpenTelemetry integers are `i64` (an unsigned
/// value would be recorded as text), saturating.
pub fn int<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_context_round_trips_and_an_invalid_one_is_none() {
        let headers = TraceHeaders::from_parts(Some(PARENT), Some("vendor=x")).expect("valid");
        assert_eq!(headers.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(TraceHeaders::of(&headers.context()), Some(headers));
        assert_eq!(TraceHeaders::from_parts(Some("00-zz"), None), None);
        assert_eq!(TraceHeaders::from_parts(None, Some("vendor=x")), None);
    }

    #[test]
    fn without_traces_the_incoming_context_passes_through() {
        let incoming = TraceHeaders::from_parts(Some(PARENT), None);
        let span = tracing::info_span!("untraced");
        assert_eq!(outgoing(&span, incoming.as_ref()), incoming);
    }
}
