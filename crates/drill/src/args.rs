//! The command line of `agentwire drill …`: one subcommand per drill, the scope and the
//! connections every one shares.

use std::path::PathBuf;
use std::time::Duration;

use agentwire_kafka::KafkaArgs;
use agentwire_valkey::ValkeyArgs;

use crate::scope::ScopeArgs;

/// Replay drills from the Kafka log: read it back whole, check it, and rebuild what is derived
/// from it. Exit status: 0 clean, 1 problems found (or, for a dry run, changes pending),
/// 2 usage or connection errors.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    #[command(subcommand)]
    pub command: DrillCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DrillCommand {
    /// Checks the log: keys, decoding, per-session order, duplicate event ids, producer
    /// sequence duplicates and gaps; with --with-valkey also what `compare` checks.
    Verify {
        #[command(flatten)]
        common: Common,
        /// Also compare Valkey with the log (as `compare` does).
        #[arg(long)]
        with_valkey: bool,
        #[command(flatten)]
        valkey: ValkeyContext,
    },
    /// Compares Valkey with the log (read only): window entries missing, extra or different,
    /// producer states that disagree, windows absent for active sessions.
    Compare {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        valkey: ValkeyContext,
    },
    /// Makes Valkey agree with the log for the scope while the stack keeps serving: rewrites
    /// the windows and repairs the producer states that `compare` finds wrong.
    Rebuild {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        valkey: ValkeyContext,
        /// Print what would change; change nothing (exit 1 when something would change).
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-runs a consumer group over a range (--group), or copies a range into another
    /// topic (--to-topic) with the same keys, headers, timestamps and order per session.
    Redrive {
        #[command(flatten)]
        common: Common,
        /// The consumer group whose committed offsets move to --from (it must have no live
        /// members), e.g. agentwire-enricher.
        #[arg(
            long,
            conflicts_with = "to_topic",
            required_unless_present = "to_topic"
        )]
        group: Option<String>,
        /// The topic the range is copied into (created like the source when absent).
        #[arg(long)]
        to_topic: Option<String>,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Writes the scope as JSON Lines: one record per line, its CloudEvent with its
    /// partition, offset, key, headers and timestamp, partition by partition in offset order.
    Export {
        #[command(flatten)]
        common: Common,
        /// The file to write ('-' for standard output).
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// Writes an export back into a topic (a drill restore): same keys, headers, timestamps
    /// and order per session.
    Import {
        #[command(flatten)]
        common: Common,
        /// The export to read.
        #[arg(long = "in", short = 'i')]
        input: PathBuf,
        /// The topic written (created like --topic when absent).
        #[arg(long)]
        to_topic: String,
    },
}

/// What every command shares: the log, the scope and the report.
#[derive(Debug, clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Writes report.json and summary.md into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Findings of each kind listed in full (all are counted).
    #[arg(long, default_value_t = 20)]
    pub max_findings: usize,
}

/// Valkey, and the settings the services keep there (the same flags and variables).
#[derive(Debug, clap::Args)]
pub struct ValkeyContext {
    #[command(flatten)]
    pub valkey: ValkeyArgs,
    /// The relays' consumer group: records below its committed offsets are in Valkey.
    #[arg(long, env = "AGENTWIRE_RELAY_GROUP", default_value = "agentwire-relay")]
    pub relay_group: String,
    /// The enrichments' topic: annotation marks are compared with it.
    #[arg(
        long,
        env = "AGENTWIRE_ENRICHED_TOPIC",
        default_value = "agent.enriched"
    )]
    pub enriched_topic: String,
    /// Sequences per producer whose outcome the gateways keep (their --dedupe-window).
    #[arg(
        long = "dedupe-window",
        env = "AGENTWIRE_DEDUPE_WINDOW",
        default_value_t = 256
    )]
    pub producer_window: u64,
    /// How long the gateways keep an idle producer's state (their --dedupe-ttl-secs).
    #[arg(
        long = "dedupe-ttl-secs",
        env = "AGENTWIRE_DEDUPE_TTL_SECS",
        default_value_t = 86_400
    )]
    pub producer_ttl_secs: u64,
}

impl ValkeyContext {
    pub fn producer_ttl(&self) -> Duration {
        Duration::from_secs(self.producer_ttl_secs)
    }
}
