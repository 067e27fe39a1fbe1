//! agentwire's load tool. Every scenario runs against a running stack (`cargo xtask up`)
//! and prints its figures; none asserts a speed.
//!
//! - `latency`: publish→deliver latency through the real stack (HTTP publish → Kafka → relay
//!   → Valkey → WebSocket) next to the raw broker produce→consume floor measured in the same
//!   run on the same broker with the same client settings.
//! - `idle`: the gateway's resident memory per idle WebSocket connection.
//! - `slow`: fast readers' latency with and without a share of clients that stop reading.

mod floor;
mod idle;
mod latency;
mod slow;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "agentwire-loadtests")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Publish→deliver latency vs the raw Kafka produce→consume floor.
    Latency(latency::Args),
    /// Gateway memory per idle WebSocket connection.
    Idle(idle::Args),
    /// Fast readers' latency while some clients stop reading, next to none stopping.
    Slow(slow::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Latency(args) => latency::run(args).await,
        Scenario::Idle(args) => idle::run(args).await,
        Scenario::Slow(args) => slow::run(args).await,
    }
}
