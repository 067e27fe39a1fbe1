//! The process-wide Prometheus recorder. Metric names live in each service's `metrics.rs`.
//!
//! Histograms are real Prometheus histograms with fixed buckets (`_bucket`, `_sum`, `_count`),
//! so percentiles can be aggregated across gateways and relays with `histogram_quantile`:
//! every `*_seconds` histogram uses [`SECONDS_BUCKETS`], every `*_size` one [`SIZE_BUCKETS`].

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of latency histograms: 100 µs to 30 s.
pub const SECONDS_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Buckets of batch-size histograms: 1 to 4096 items.
pub const SIZE_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first use and returns the handle that renders `/metrics`.
/// Several services in one process (tests, the all-in-one binary) share it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed; ours then renders nothing new.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

fn builder() -> PrometheusBuilder {
    // Both bucket lists are constant and non-empty, the only condition for an error.
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &SIZE_BUCKETS))
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_and_size_histograms_render_as_buckets() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("agentwire_test_publish_seconds").record(0.003);
            metrics::histogram!("agentwire_test_batch_size").record(3.0);
        });
        let text = handle.render();
        assert!(
            text.contains("agentwire_test_publish_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("agentwire_test_batch_size_bucket{le=\"2\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("agentwire_test_batch_size_bucket{le=\"4\"} 1"),
            "{text}"
        );
    }
}
