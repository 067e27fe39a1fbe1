//! Process bootstrap shared by the binaries: logging and trace export, trace context
//! propagation, the Prometheus recorder, the
//! admin HTTP endpoint (`/healthz`, `/metrics`), the shutdown token, and where a package's
//! own files are.

pub mod admin;
pub mod metrics;
pub mod paths;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
