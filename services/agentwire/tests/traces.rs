//! One event, one trace, across every hop, in a real trace store (Arize Phoenix over OTLP):
//! publish → append → relay → fanout → enrich → annotate → relay → fanout; and a trace
//! backend that is gone changes nothing for delivery.
//!
//! The gateway, the relay and the enricher run in this test's process (each test is its own
//! process under nextest), so their spans leave through this process's exporter.

mod common;

use agentwire_runtime::telemetry::export::{ExportSettings, OtlpProtocol};
use agentwire_runtime::telemetry::{self, LogFormat, Telemetry};
use agentwire_test_support::{Phoenix, SpanRecord};
use agentwire_test_support::{unique, wait_until};
use common::enricher::{self, Enricher};
use common::ws::{next_frame, subscribe};
use common::{LIMIT, Stack, event};

use serde_json::Value;

/// The client's own span: the event is published inside it.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traced(endpoint: String, protocol: OtlpProtocol) -> Telemetry {
    telemetry::init_with(
        LogFormat::Json,
        &ExportSettings {
            endpoint,
            protocol,
            service_name: "agentwire-test".into(),
        },
    )
}

/// The one span of `spans` named `name` whose attribute `key` is `value` (when given).
fn one<'a>(spans: &'a [SpanRecord], name: &str, with: Option<(&str, &str)>) -> &'a SpanRecord {
    let found: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| with.is_none_or(|(k, v)| s.attribute(k).and_then(Value::as_str) == Some(v)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one span {name} {with:?}; the trace holds {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

fn child_of(span: &SpanRecord, parent: &SpanRecord) {
    assert_eq!(
        span.parent_id.as_deref(),
        Some(parent.span_id.as_str()),
        "{} is a child of {}",
        span.name,
        parent.name
    );
}

fn text(span: &SpanRecord, key: &str) -> String {
    match span.attribute(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => panic!(
            "{} has no attribute {key}: {:?}",
            span.name, span.attributes
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_from_publish_to_its_annotations_delivery() {
    let phoenix = Phoenix::start().await;
    let telemetry = traced(phoenix.otlp_grpc_endpoint(), OtlpProtocol::Grpc);
    assert!(telemetry.tracing(), "this process exports traces");
    let stack = Stack::start(1).await;
    let enricher_group = unique("enricher");
    let enricher = Enricher::start(enricher::config(&stack, &enricher_group));
    let session = stack.session("traced");
    let mut ws = subscribe(&stack, &session).await;

    let mut published = event(
        &session,
        "p",
        1,
        "My credit card was charged twice for the same subscription this month.",
    );
    published.traceparent = Some(format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"));
    let ack = stack.http().publish(&published).await.expect("publish");
    assert_eq!(
        ack.trace_id.as_deref(),
        Some(CLIENT_TRACE),
        "the answer names the trace"
    );
    // The event, then its annotation, reach the subscriber.
    let (mut saw_event, mut saw_annotation) = (false, false);
    while !(saw_event && saw_annotation) {
        let frame = next_frame(&mut ws).await;
        match frame["op"].as_str() {
            Some("event") => saw_event = true,
            Some("enriched") => saw_annotation = true,
            _ => panic!("unexpected frame {frame}"),
        }
    }
    let flushing = tokio::task::spawn_blocking(move || {
        telemetry.flush();
        telemetry
    });
    let telemetry = flushing.await.expect("flush");

    let topic = stack.topic.clone();
    let enriched = stack.enriched_topic.clone();
    let names = [
        "publish".to_owned(),
        format!("send {topic}"),
        format!("process {topic}"),
        format!("enrich {topic}"),
        format!("send {enriched}"),
        format!("process {enriched}"),
    ];
    let spans = phoenix
        .wait_for_trace(
            CLIENT_TRACE,
            |spans| {
                names.iter().all(|n| spans.iter().any(|s| &s.name == n))
                    && spans.iter().filter(|s| s.name == "deliver").count() >= 2
            },
            LIMIT,
        )
        .await;

    let publish = one(&spans, "publish", None);
    assert_eq!(
        publish.parent_id.as_deref(),
        Some(CLIENT_SPAN),
        "publish continues the client's span"
    );
    assert_eq!(text(publish, "cloudevents.event_id"), ack.id);
    assert_eq!(text(publish, "agentwire.session"), session.to_string());
    assert_eq!(text(publish, "agentwire.tenant"), stack.tenant);
    assert_eq!(text(publish, "agentwire.publish.outcome"), "ok");
    assert_eq!(text(publish, "agentwire.transport"), "http");

    let append = one(&spans, &format!("send {topic}"), None);
    child_of(append, publish);
    assert_eq!(text(append, "messaging.system"), "kafka");
    assert_eq!(text(append, "messaging.operation.type"), "send");
    assert_eq!(text(append, "messaging.destination.name"), topic);
    assert_eq!(
        text(append, "messaging.kafka.offset"),
        ack.offset.0.to_string()
    );

    let relay = one(&spans, &format!("process {topic}"), None);
    child_of(relay, append);
    assert_eq!(
        text(relay, "messaging.consumer.group.name"),
        stack.relay_group
    );
    assert_eq!(
        text(relay, "messaging.kafka.offset"),
        ack.offset.0.to_string()
    );

    let delivered = one(&spans, "deliver", Some(("agentwire.publication", "event")));
    child_of(delivered, relay);
    assert_eq!(
        text(delivered, "agentwire.connections"),
        "1",
        "one connection follows"
    );

    let enrich = one(&spans, &format!("enrich {topic}"), None);
    child_of(enrich, append);
    assert_eq!(
        text(enrich, "messaging.consumer.group.name"),
        enricher_group
    );
    let annotate = one(&spans, &format!("send {enriched}"), None);
    child_of(annotate, enrich);
    assert!(
        text(annotate, "agentwire.labels").contains("billing"),
        "{:?}",
        annotate.attributes
    );
    let carried = one(&spans, &format!("process {enriched}"), None);
    child_of(carried, annotate);
    let annotation = one(
        &spans,
        "deliver",
        Some(("agentwire.publication", "annotation")),
    );
    child_of(annotation, carried);

    // In order: each hop starts no earlier than the one before it.
    let order = [publish, append, relay, delivered];
    for pair in order.windows(2) {
        assert!(
            pair[0].start_time <= pair[1].start_time,
            "{} before {}",
            pair[0].name,
            pair[1].name
        );
    }
    assert!(
        annotate.start_time >= enrich.start_time && annotation.start_time >= carried.start_time
    );

    // The batch the event was enriched in is a trace of its own (it holds many events),
    // linked from the event's `enrich` span; its inference is its child.
    let batch_trace = text(enrich, "agentwire.enricher.batch_trace_id");
    let batch_spans = phoenix
        .wait_for_trace(
            &batch_trace,
            |spans| spans.iter().any(|s| s.name == "inference"),
            LIMIT,
        )
        .await;
    let batch = one(&batch_spans, "enrich batch", None);
    child_of(one(&batch_spans, "inference", None), batch);
    assert_eq!(text(batch, "messaging.batch.message_count"), "1");

    enricher.stop().await;
    drop(telemetry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_trace_endpoint_changes_nothing_for_delivery() {
    const EVENTS: u64 = 200;
    // A port nobody listens on: every export fails.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let telemetry = traced(format!("http://127.0.0.1:{dead}"), OtlpProtocol::Grpc);
    assert!(telemetry.tracing());
    let stack = Stack::start(1).await;
    let session = stack.session("untraceable");
    let mut ws = subscribe(&stack, &session).await;
    let http = stack.http();
    let mut acks = Vec::new();
    for n in 1..=EVENTS {
        let mut e = event(&session, "p", n, "published while the trace store is gone");
        e.traceparent = Some(format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"));
        acks.push(
            http.publish(&e)
                .await
                .expect("publishing needs no trace store")
                .offset,
        );
    }
    let mut offsets = Vec::new();
    while offsets.len() < acks.len() {
        let frame = next_frame(&mut ws).await;
        assert_eq!(frame["op"], "event", "{frame}");
        offsets.push(frame["offset"].as_u64().expect("offset"));
    }
    assert_eq!(
        offsets,
        acks.iter().map(|o| o.0).collect::<Vec<_>>(),
        "every event, in order"
    );
    // The spans were made and their export failed, counted.
    wait_until(LIMIT, "failed exports to be counted", || async {
        match stack.metric("agentwire_trace_export_failures_total").await {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
