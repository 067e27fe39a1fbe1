//! The load tool's command line; the scenarios are in the library (`src/lib.rs`).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agentwire_loadtests::main(agentwire_loadtests::Cli::parse()).await
}
