//! agentwire's load tool. Every scenario runs against a running stack (`cargo xtask up`),
//! prints its figures and writes `result.json`, `summary.md` and `latency.png`; none asserts a
//! speed. The test suite runs a short smoke of each (`services/agentwire/tests/loadtests_smoke.rs`).
//!
//! - `fanout`: durable events from WebSocket publishers to many WebSocket subscribers, next
//!   to the raw Kafka, Valkey pub/sub and WebSocket floors (and the Socket.IO peer with `--peer`).
//! - `ephemeral`: the same with ephemeral messages (no log).
//! - `publish`: durable publish throughput and ack latency over HTTP and WebSocket.
//! - `reconnect-storm`: every connection dropped at once; time until all resumed, losses.
//! - `slow-consumers`: fast readers' latency with and without a share of clients not reading.
//! - `latency`: publish→deliver latency next to the raw broker floor (HTTP publisher).
//! - `idle`: the gateway's resident memory per idle WebSocket connection.
//! - `broker`: the Kafka-API broker alone: ack and produce→consume latency, catch-up rate of
//!   a backlog, and survival of a producer's delivery timeouts.
//! - `soak`: durable fanout held for minutes, with the processes' CPU and memory over time.
//! - `tasks`: the work queue, enqueue→complete throughput and latency, losses and double runs
//!   under faults (a worker SIGKILLed, Valkey emptied), next to BullMQ with `--peer`.

pub mod broker;
mod broker_trigger;
mod chart;
pub mod drill_log;
pub mod fanout;
mod floor;
mod idle;
mod latency;
mod peer;
mod procs;
pub mod publish;
pub mod report;
pub mod resources;
pub mod slow;
pub mod soak;
mod stats;
pub mod storm;
pub mod tasks;
mod tasks_agentwire;
mod tasks_bullmq;
mod tasks_summary;
mod tasks_tally;
pub mod tasks_worker;
pub mod ws_floor;
pub mod wsload;

use clap::{Parser, Subcommand};

/// This package's directory (its peers and results folders), wherever the tool runs from.
pub(crate) fn package_dir() -> std::path::PathBuf {
    agentwire_runtime::paths::package_dir("loadtests", env!("CARGO_MANIFEST_DIR"))
}

#[derive(Debug, Parser)]
#[command(name = "agentwire-loadtests")]
pub struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Durable fanout: S sessions, N subscribers, P publishers at a target rate.
    Fanout(fanout::Args),
    /// Ephemeral fanout (token-stream style): no log, shed under pressure.
    Ephemeral(fanout::Args),
    /// Durable publish throughput and ack latency over HTTP and WebSocket.
    Publish(publish::Args),
    /// Drop every connection at once; time until all resumed, losses and duplicates.
    ReconnectStorm(storm::Args),
    /// Fast readers' latency while some clients stop reading, next to none stopping.
    #[command(alias = "slow")]
    SlowConsumers(slow::Args),
    /// Publish→deliver latency vs the raw Kafka produce→consume floor.
    Latency(latency::Args),
    /// Gateway memory per idle WebSocket connection.
    Idle(idle::Args),
    /// The broker alone: ack and produce→consume latency, catch-up, timeout trigger.
    Broker(broker::Args),
    /// Durable fanout held for minutes, with the processes' CPU and memory over time.
    Soak(soak::Args),
    /// Replay drill figures: fill a topic with valid events; read it back with a bare consumer.
    DrillLog(drill_log::Args),
    /// Work queue vs BullMQ: throughput, latency, losses and double runs under faults.
    Tasks(tasks::Args),
    /// The WebSocket fanout floor's server (started by `fanout`/`ephemeral` themselves).
    #[command(hide = true)]
    WsFloorServer(ws_floor::ServeArgs),
    /// One worker process of `tasks` (started by it; prints S/C/E lines per task).
    #[command(hide = true)]
    TasksWorker(tasks_worker::WorkerArgs),
}

/// Runs the scenario the command line names.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.scenario {
        Scenario::Fanout(args) => fanout::run(args, wsload::Class::Durable).await.map(drop),
        Scenario::Ephemeral(args) => fanout::run(args, wsload::Class::Ephemeral).await.map(drop),
        Scenario::Publish(args) => publish::run(args).await.map(drop),
        Scenario::ReconnectStorm(args) => storm::run(args).await.map(drop),
        Scenario::SlowConsumers(args) => slow::run(args).await.map(drop),
        Scenario::Latency(args) => latency::run(args).await,
        Scenario::Idle(args) => idle::run(args).await,
        Scenario::Broker(args) => broker::run(args).await.map(drop),
        Scenario::Soak(args) => soak::run(args).await.map(drop),
        Scenario::DrillLog(args) => drill_log::run(args).await,
        Scenario::Tasks(args) => tasks::run(args).await.map(drop),
        Scenario::WsFloorServer(args) => ws_floor::serve(args).await,
        Scenario::TasksWorker(args) => tasks_worker::run(args).await,
    }
}
