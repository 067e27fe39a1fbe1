//! Process bootstrap shared by the binaries: logging/tracing, the Prometheus recorder, the
//! admin HTTP endpoint (`/healthz`, `/metrics`) and the shutdown token.

pub mod admin;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
