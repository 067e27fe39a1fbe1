//! The process-wide Prometheus recorder. Metric names live in each service's `metrics.rs`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first use and returns the handle that renders `/metrics`.
/// Several services in one process (tests, the all-in-one binary) share it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed; ours then renders nothing new.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
