//! `agentwire-enricher`: the enrichment service (`run`), plus `parity` (the golden check on a
//! chosen device, for machines where only the binary travels) and `bench` (throughput).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use agentwire_enricher::golden::{self, Golden};
use agentwire_enricher::{DeviceChoice, Embedder, EnricherConfig, ModelFiles, bench};
use agentwire_runtime::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "agentwire-enricher",
    version,
    about = "Embeds and labels agent events with all-MiniLM-L6-v2 in burn"
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
    /// Consume agent.events, publish agent.enriched.
    Run {
        /// Address of /healthz and /metrics.
        #[arg(long, env = "AGENTWIRE_ADMIN_LISTEN", default_value = "127.0.0.1:9465")]
        admin_listen: SocketAddr,
        #[command(flatten)]
        config: EnricherConfig,
    },
    /// Compare embeddings on one device with the golden fixture; non-zero exit on a mismatch.
    Parity {
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        /// The fixture (default: services/enricher/tests/fixtures/minilm_golden.json).
        #[arg(long)]
        fixture: Option<PathBuf>,
    },
    /// Sentences/s and batch latency at several batch sizes on one device.
    Bench {
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
        batch_sizes: Vec<usize>,
        /// Least batches per size.
        #[arg(long, default_value_t = 10)]
        min_batches: usize,
        /// Least seconds per size.
        #[arg(long, default_value_t = 3.0)]
        min_seconds: f64,
        /// Sentences come from this fixture, cycled.
        #[arg(long)]
        fixture: Option<PathBuf>,
        /// Leave out sentences longer than this many characters (the fixture's two
        /// 256-token cases pad every batch that holds them to 256 tokens).
        #[arg(long)]
        max_chars: Option<usize>,
        /// Also write the rows as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            admin_listen,
            config,
        } => {
            let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
            // Within the runtime (the OTLP gRPC client starts its task there); dropped after
            // the work, so the spans still queued are flushed.
            let telemetry = {
                let _entered = runtime.enter();
                agentwire_runtime::telemetry::init(cli.log_format, "agentwire-enricher")
            };
            let outcome = runtime.block_on(serve(admin_listen, config));
            drop(telemetry);
            outcome
        }
        Command::Parity { device, fixture } => {
            agentwire_runtime::telemetry::init_logs(cli.log_format);
            parity(device, fixture)
        }
        Command::Bench {
            device,
            batch_sizes,
            min_batches,
            min_seconds,
            fixture,
            max_chars,
            json,
        } => {
            agentwire_runtime::telemetry::init_logs(cli.log_format);
            let plan = bench::BenchPlan {
                min_batches,
                min_time: Duration::from_secs_f64(min_seconds),
            };
            run_bench(device, &batch_sizes, plan, fixture, max_chars, json)
        }
    }
}

async fn serve(admin_listen: SocketAddr, config: EnricherConfig) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("enricher configuration")?;
    let shutdown = agentwire_runtime::shutdown::on_signal();
    let admin = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("listen on {admin_listen}"))?;
    tracing::info!(addr = %admin_listen, "enricher admin endpoint listening");
    let admin = tokio::spawn(agentwire_runtime::admin::serve(admin, shutdown.clone()));
    let outcome = agentwire_enricher::run(config, shutdown.clone()).await;
    shutdown.cancel();
    admin.await.context("admin endpoint task")??;
    Ok(outcome?)
}

fn load(device: DeviceChoice) -> anyhow::Result<Embedder> {
    let embedder = Embedder::load(&ModelFiles::locate()?, device)?;
    println!("device: {}", embedder.adapter());
    Ok(embedder)
}

fn parity(device: DeviceChoice, fixture: Option<PathBuf>) -> anyhow::Result<()> {
    let golden = Golden::load(&fixture.unwrap_or_else(Golden::default_path))?;
    let embedder = load(device)?;
    let cases: Vec<_> = golden.cases.iter().collect();
    let results = golden::check(&embedder, &cases)?;
    let mut worst = f32::MAX;
    for r in &results {
        worst = worst.min(r.batched).min(r.alone);
        println!(
            "{} tokens={} batched={:.6} alone={:.6} padding={:.6} {:?}",
            if r.passed() { "ok  " } else { "FAIL" },
            r.tokens_match,
            r.batched,
            r.alone,
            r.padding,
            r.text.chars().take(48).collect::<String>()
        );
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    println!(
        "{} cases, {failed} failed, lowest cosine {worst:.6} (needs ≥ {})",
        results.len(),
        golden::MIN_COSINE
    );
    anyhow::ensure!(failed == 0, "{failed} cases failed");
    Ok(())
}

fn run_bench(
    device: DeviceChoice,
    batch_sizes: &[usize],
    plan: bench::BenchPlan,
    fixture: Option<PathBuf>,
    max_chars: Option<usize>,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let sentences: Vec<String> = Golden::load(&fixture.unwrap_or_else(Golden::default_path))?
        .texts()
        .into_iter()
        .filter(|t| max_chars.is_none_or(|max| t.chars().count() <= max))
        .collect();
    let embedder = load(device)?;
    let rows = bench::run(&embedder, &sentences, batch_sizes, plan)?;
    println!("| backend | batch | sentences/s | p50 ms | p99 ms | batches |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| burn {} | {} | {:.1} | {:.2} | {:.2} | {} |",
            embedder.adapter().label(),
            r.batch,
            r.sentences_per_s,
            r.p50_ms,
            r.p99_ms,
            r.batches
        );
    }
    if let Some(path) = json {
        let doc = serde_json::json!({
            "backend": format!("burn {}", embedder.adapter().label()),
            "adapter": embedder.adapter().to_string(),
            "rows": rows,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
