//! Phoenix, the trace store of the tests and of the local stack, receives spans from the Rust
//! OTLP exporter the services use, over HTTP/protobuf and over gRPC, and gives them back as one
//! trace: parent, attributes with their types, status and events kept; the span kind not.

use std::time::Duration;

use agentwire_test_support::{Phoenix, SpanRecord};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

/// The project both "services" name, as the local stack's do.
const PROJECT: &str = "agentwire-test";

fn provider(service: &str, exporter: SpanExporter) -> SdkTracerProvider {
    let resource = Resource::builder_empty()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("openinference.project.name", PROJECT))
        .build();
    SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build()
}

fn named<'a>(spans: &'a [SpanRecord], name: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_sent_over_otlp_http_and_grpc_come_back_as_one_trace() {
    let phoenix = Phoenix::start().await;
    let http = provider(
        "producer-over-http",
        SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(phoenix.otlp_http_traces_url())
            .build()
            .expect("the OTLP/HTTP exporter"),
    );
    // Built inside the runtime: tonic spawns its connection task there.
    let grpc = provider(
        "consumer-over-grpc",
        SpanExporter::builder()
            .with_tonic()
            .with_endpoint(phoenix.otlp_grpc_endpoint())
            .build()
            .expect("the OTLP/gRPC exporter"),
    );

    let producer = http.tracer("trace-backend-test");
    let mut publish = producer
        .span_builder("publish")
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.kafka.offset", 42_i64),
            KeyValue::new("agentwire.tenant", "acme"),
        ])
        .start(&producer);
    publish.add_event("accepted", vec![KeyValue::new("agentwire.dedupe", "new")]);
    let publish_context = publish.span_context().clone();
    let trace_id = publish_context.trace_id().to_string();

    // The consumer continues the trace from the propagated context, as the relay does from a
    // Kafka header.
    let consumer = grpc.tracer("trace-backend-test");
    let parent = Context::new().with_remote_span_context(publish_context.clone());
    let mut process = consumer
        .span_builder("process")
        .with_kind(SpanKind::Consumer)
        .start_with_context(&consumer, &parent);
    process.set_status(Status::error("valkey refused"));
    process.end();
    publish.end();

    tokio::task::spawn_blocking(move || {
        for provider in [http, grpc] {
            provider.force_flush().expect("flush");
            provider.shutdown().expect("shut down");
        }
    })
    .await
    .expect("the flushing thread");

    let spans = phoenix
        .wait_for_trace(&trace_id, |spans| spans.len() == 2, Duration::from_secs(30))
        .await;
    let (publish, process) = (named(&spans, "publish"), named(&spans, "process"));
    assert_eq!(publish.trace_id, trace_id);
    assert_eq!(publish.span_id, publish_context.span_id().to_string());
    assert_eq!(publish.parent_id, None);
    assert_eq!(process.parent_id.as_deref(), Some(publish.span_id.as_str()));
    assert_eq!(
        publish.attribute("messaging.kafka.offset"),
        Some(&serde_json::json!(42))
    );
    assert_eq!(
        publish.attribute("agentwire.tenant"),
        Some(&serde_json::json!("acme"))
    );
    assert_eq!(publish.events.len(), 1, "{publish:#?}");
    assert_eq!(publish.events[0].name, "accepted");
    assert_eq!(publish.status_code, "UNSET");
    assert_eq!(
        (
            process.status_code.as_str(),
            process.status_message.as_str()
        ),
        ("ERROR", "valkey refused")
    );
    assert!(publish.start_time <= process.start_time && process.end_time <= publish.end_time);
    // Phoenix keeps OpenInference's kind only; a test of span kinds cannot ask it.
    assert_eq!(publish.openinference_kind, "UNKNOWN");
}
