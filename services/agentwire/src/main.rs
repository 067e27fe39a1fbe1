//! `agentwire`: one binary for every service. It parses configuration, starts telemetry,
//! takes the shutdown token and hands a bound listener to the service's `run`.

mod demo;
mod tasks;

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use agentwire_gateway::GatewayConfig;
use agentwire_kafka::KafkaArgs;
use agentwire_relay::RelayConfig;
use agentwire_runtime::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "agentwire",
    version,
    about = "Durable log + realtime fanout for agent events"
)]
struct Cli {
    /// Log line format: text or json.
    #[arg(
        long,
        env = "AGENTWIRE_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The public HTTP + WebSocket API.
    Gateway {
        /// Address the API listens on.
        #[arg(long, env = "AGENTWIRE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        // Boxed: the gateway's settings dwarf the other commands'.
        #[command(flatten)]
        config: Box<GatewayConfig>,
    },
    /// Carries the Kafka log into Valkey (history windows + live announcements).
    Relay {
        /// Address of the relay's /healthz and /metrics.
        #[arg(long, env = "AGENTWIRE_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
        admin_listen: SocketAddr,
        #[command(flatten)]
        config: RelayConfig,
    },
    /// Creates the event log topic if it does not exist.
    CreateTopics {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Partitions of the event log topic.
        #[arg(long, env = "AGENTWIRE_PARTITIONS", default_value_t = 8)]
        partitions: i32,
    },
    /// Simulated agents publishing into sessions, and a client printing what it receives.
    Demo(demo::DemoArgs),
    /// Replay drills from the Kafka log: verify, compare, rebuild, redrive, export, import.
    Drill(agentwire_drill::DrillArgs),
    /// Work-queue tools: rebuild the queues from the log.
    Tasks(tasks::TasksArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    let service = match &cli.command {
        Command::Gateway { .. } => "agentwire-gateway",
        Command::Relay { .. } => "agentwire-relay",
        Command::Drill(_) => "agentwire-drill",
        _ => "agentwire",
    };
    // Within the runtime: the OTLP gRPC client starts its connection task there. Dropped
    // after the work, so the spans still queued are flushed before the process exits.
    let telemetry = {
        let _entered = runtime.enter();
        agentwire_runtime::telemetry::init(cli.log_format, service)
    };
    if let Command::Drill(args) = cli.command {
        // 0 clean, 1 problems found, 2 usage or connection errors (clap's own usage errors
        // exit 2 too).
        let verdict = runtime.block_on(agentwire_drill::run(args));
        drop(telemetry);
        drop(runtime);
        std::process::exit(verdict.exit_code());
    }
    let outcome = runtime.block_on(run(cli.command));
    drop(telemetry);
    outcome
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = agentwire_runtime::shutdown::on_signal();
    match command {
        Command::Gateway { listen, config } => {
            config
                .validate()
                .map_err(anyhow::Error::msg)
                .context("gateway configuration")?;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            agentwire_gateway::run(listener, *config, shutdown).await?;
        }
        Command::Relay {
            admin_listen,
            config,
        } => {
            config
                .validate()
                .map_err(anyhow::Error::msg)
                .context("relay configuration")?;
            let admin = TcpListener::bind(admin_listen)
                .await
                .with_context(|| format!("listen on {admin_listen}"))?;
            tracing::info!(addr = %admin_listen, "relay admin endpoint listening");
            let admin = tokio::spawn(agentwire_runtime::admin::serve(admin, shutdown.clone()));
            agentwire_relay::run(config, shutdown).await?;
            admin.await.context("admin endpoint task")??;
        }
        Command::CreateTopics { kafka, partitions } => {
            kafka
                .validate()
                .map_err(anyhow::Error::msg)
                .context("kafka configuration")?;
            anyhow::ensure!(partitions >= 1, "--partitions must be at least 1");
            agentwire_kafka::ensure_topic(&kafka.settings(), &kafka.topic, partitions).await?;
            println!("topic {} ready ({partitions} partitions)", kafka.topic);
        }
        Command::Demo(args) => demo::run(args, shutdown).await?,
        Command::Tasks(args) => tasks::run(args).await?,
        Command::Drill(_) => unreachable!("drills run before the services' dispatch"),
    }
    Ok(())
}
