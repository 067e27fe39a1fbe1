//! Logging and tracing set-up: structured `tracing` events to stderr, filtered by `RUST_LOG`
//! (default `info`), as text or JSON lines; and, when an OTLP endpoint is configured, the
//! services' spans exported as OpenTelemetry traces ([`export`]).
//!
//! Only the standard variables configure traces: `OTEL_EXPORTER_OTLP_ENDPOINT` (off when
//! unset), `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or `http/protobuf`),
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (parent-based by default). `RUST_LOG` does not filter spans: a
//! quiet log still traces.

pub mod export;
mod log_ids;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// Output format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format must be text or json, not {other:?}")),
        }
    }
}

/// The crates whose spans become trace spans (not the libraries under them: the exporter's
/// own HTTP and gRPC clients would otherwise trace themselves).
const TRACED_CRATES: [&str; 6] = [
    "agentwire_gateway",
    "agentwire_relay",
    "agentwire_enricher",
    "agentwire_kafka",
    "agentwire_valkey",
    "agentwire_runtime",
];

/// The crates under the OTLP exporter, whose spans are never traced.
const EXPORTER_STACK: [&str; 6] = [
    "h2",
    "hyper",
    "tonic",
    "tower::",
    "reqwest",
    "opentelemetry",
];

/// What [`init`] set up; dropping it flushes the spans still waiting (for a few seconds at
/// most) and stops the exporter.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every span ended so far before returning (blocks the thread: from async code
    /// call it in `spawn_blocking` or `block_in_place`).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(err) = provider.force_flush()
        {
            tracing::warn!(error = %err, "flushing spans failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "the trace exporter did not shut down cleanly");
        }
    }
}

/// Installs the global subscriber, with trace export when an OTLP endpoint is configured
/// (`service` names the service unless `OTEL_SERVICE_NAME` does). Call it within a tokio
/// runtime. Safe to call more than once: later calls install nothing and trace nothing.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    match export::ExportSettings::from_env(service) {
        Ok(settings) => install(format, settings.as_ref()),
        Err(err) => {
            let telemetry = install(format, None);
            tracing::warn!(error = %err, "traces are off");
            telemetry
        }
    }
}

/// As [`init`], with the export settings given rather than read from the environment (for
/// programs that run the services as libraries, and tests).
pub fn init_with(format: LogFormat, settings: &export::ExportSettings) -> Telemetry {
    install(format, Some(settings))
}

/// Installs the global subscriber for logs only (commands that trace nothing, such as
/// benchmarks), whatever the `OTEL_*` variables say.
pub fn init_logs(format: LogFormat) {
    install(format, None);
}

fn install(format: LogFormat, settings: Option<&export::ExportSettings>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (provider, export_error) = match settings.map(export::provider) {
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(err)) => (None, Some(err)),
        None => (None, None),
    };
    // One global rule: our crates' spans at INFO and above exist whatever RUST_LOG says (a
    // quiet log still traces); other spans and all events exist down to the most verbose level
    // the log shows (its own filter then picks), except the spans of the exporter's own HTTP
    // and gRPC stack, which would trace themselves. The trace layer has no filter of its own:
    // a per-layer filter on it lost spans at random (their parents then looked like roots).
    let max_log = filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let traced = tracing_subscriber::filter::filter_fn(move |meta| {
        let ours = TRACED_CRATES.iter().any(|c| meta.target().starts_with(c));
        if meta.is_span() && ours && *meta.level() <= Level::INFO {
            return true;
        }
        if meta.is_span() && EXPORTER_STACK.iter().any(|c| meta.target().starts_with(c)) {
            return false;
        }
        *meta.level() <= max_log
    });
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("agentwire"))
            .with_level(true)
            .with_target(false)
    });
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            // Colours only on a terminal: log files and collectors get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .event_format(log_ids::WithTraceIds(fmt::format().json()))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(traced)
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if let Some(err) = export_error {
        tracing::warn!(error = %err, "traces are off: the OTLP exporter could not be built");
    }
    if installed && provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing::info!("exporting traces over OTLP");
        Telemetry { provider }
    } else {
        Telemetry::default()
    }
}
