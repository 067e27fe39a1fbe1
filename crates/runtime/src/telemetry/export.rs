//! The OTLP span export: configured only by the standard `OTEL_*` variables, off without an
//! endpoint, and never in the way of the work being traced.
//!
//! Spans go through the SDK's batch processor, which exports from its own thread. In front of
//! it sits [`Admission`]: it counts the spans waiting for export and drops (and counts) a span
//! when [`QUEUE_LIMIT`] are already waiting, so a slow or dead trace backend costs memory up
//! to that bound and never a wait. The batch processor's own queue is as large, so it never
//! has to drop one itself, and every dropped span shows in
//! `agentwire_trace_spans_dropped_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter,
    SpanProcessor,
};

/// Spans that may wait for export at once; more are dropped and counted.
pub const QUEUE_LIMIT: usize = 8192;

/// Spans dropped because [`QUEUE_LIMIT`] were already waiting for export.
pub const SPANS_DROPPED: &str = "agentwire_trace_spans_dropped_total";
/// Spans handed to the exporter.
pub const SPANS_EXPORTED: &str = "agentwire_trace_spans_exported_total";
/// Export calls that failed (the backend was unreachable, slow or refused them); their spans
/// are lost.
pub const EXPORT_FAILURES: &str = "agentwire_trace_export_failures_total";

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, not {0:?}")]
    Protocol(String),
    #[error("the OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Where and how spans are exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSettings {
    /// For gRPC the collector's address (`http://host:4317`); for HTTP the full traces URL
    /// (`http://host:4318/v1/traces`).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// `service.name`, unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name one.
    pub service_name: String,
}

impl ExportSettings {
    /// From the standard variables: `None` (traces off) without an endpoint.
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as it is; `OTEL_EXPORTER_OTLP_ENDPOINT` is
    /// a base to which HTTP adds `/v1/traces`. The protocol defaults to gRPC.
    pub fn from_env(service_name: &str) -> Result<Option<Self>, ExportError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            None | Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some(other) => return Err(ExportError::Protocol(other.to_owned())),
        };
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(exact), _) => exact,
            (None, Some(base)) if protocol == OtlpProtocol::HttpProtobuf => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, Some(base)) => base,
            (None, None) => return Ok(None),
        };
        Ok(Some(ExportSettings {
            endpoint,
            protocol,
            service_name: service_name.to_owned(),
        }))
    }
}

/// A tracer provider exporting over OTLP. Must be called within a tokio runtime (the gRPC
/// client spawns its connection task there). The sampler is the SDK's default (parent-based,
/// always on) unless `OTEL_TRACES_SAMPLER`/`_ARG` say otherwise; the resource comes from
/// `OTEL_SERVICE_NAME`/`OTEL_RESOURCE_ATTRIBUTES`, with `settings.service_name` when neither
/// names the service.
pub fn provider(settings: &ExportSettings) -> Result<SdkTracerProvider, ExportError> {
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&settings.endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&settings.endpoint)
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
    };
    // The counters exist from the start (the recorder installed first), so a backend that
    // never answers shows as zero exported rather than as no series.
    crate::metrics::handle();
    for name in [SPANS_DROPPED, SPANS_EXPORTED, EXPORT_FAILURES] {
        metrics::counter!(name).absolute(0);
    }
    let waiting = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        waiting: waiting.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE_LIMIT)
            .with_max_export_batch_size(512)
            .with_scheduled_delay(Duration::from_millis(500))
            .build(),
    )
    .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(Admission {
            inner: batch,
            waiting,
        })
        .with_resource(resource(&settings.service_name))
        .build())
}

/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

fn resource(service_name: &str) -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|s| s.contains("service.name="));
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(service_name.to_owned()).build()
    }
}

/// Admits a finished span to the batch processor while fewer than [`QUEUE_LIMIT`] wait.
#[derive(Debug)]
struct Admission {
    inner: BatchSpanProcessor,
    waiting: Arc<AtomicUsize>,
}

impl SpanProcessor for Admission {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= QUEUE_LIMIT {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(SPANS_DROPPED).increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, releasing admitted spans as they leave the queue and counting the outcome.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.waiting.fetch_sub(n, Ordering::AcqRel);
        let outcome = self.inner.export(batch).await;
        match &outcome {
            Ok(()) => metrics::counter!(SPANS_EXPORTED).increment(n as u64),
            Err(_) => metrics::counter!(EXPORT_FAILURES).increment(1),
        }
        outcome
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
