//! Fixtures for agentwire's integration tests, which run against real servers.
//!
//! Two ways to get a server:
//! - [`TestEnv::from_env`]: the Valkey and Kafka-API broker that `cargo xtask test` starts once
//!   for the whole run. Tests share them, so every test names its own topics, keys and groups
//!   with [`unique`].
//! - [`ValkeyServer`] and [`Broker`]: a dedicated process per test, for fault tests that kill
//!   and restart the server. [`ChildProcess`] does the same for any other binary, such as
//!   `agentwire relay`.
//! - [`ValkeyCluster`]: a Valkey Cluster of three primaries and three replicas per test.
//! - [`PrometheusServer`]: a real Prometheus scraping the targets a test names, for checks of
//!   the dashboard's queries and the alert rules; [`promql::metric_names`] lists the metrics
//!   an expression reads.
//! - [`Phoenix`]: Arize Phoenix, the trace store, receiving OTLP over gRPC and HTTP and
//!   answering [`Phoenix::spans_of_trace`] with typed [`SpanRecord`]s.
//!
//! Tests never sleep: they poll with [`wait_until`] against a deadline. A missing server is a
//! panic that says how to get one, never a silent skip.
//!
//! Every child process is killed when its owner is dropped, and (on Linux) when the test
//! binary itself dies, so a crashed or killed test run leaves nothing behind.

mod binaries;
mod broker;
mod env;
mod launch;
mod names;
mod phoenix;
mod probe;
mod process;
mod prometheus;
pub mod promql;
mod valkey;
mod valkey_cluster;
mod wait;

pub use broker::{Broker, create_topic};
pub use env::TestEnv;
pub use names::unique;
pub use phoenix::{Phoenix, PhoenixError, SpanEvent, SpanRecord};
pub use process::ChildProcess;
pub use prometheus::{PrometheusError, PrometheusServer, RuleHealth, Sample, promtool};
pub use valkey::ValkeyServer;
pub use valkey_cluster::ValkeyCluster;
pub use wait::{Check, wait_until, wait_until_blocking};
