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
mod probe;
mod process;
mod valkey;
mod valkey_cluster;
mod wait;

pub use broker::{Broker, create_topic};
pub use env::TestEnv;
pub use names::unique;
pub use process::ChildProcess;
pub use valkey::ValkeyServer;
pub use valkey_cluster::ValkeyCluster;
pub use wait::{Check, wait_until, wait_until_blocking};
