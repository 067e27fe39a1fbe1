//! `tasks`: agentwire's work queue next to BullMQ (`--peer`) on the same Valkey, with the same
//! task count, payload size, workers and prefetch (= BullMQ's concurrency), row by row:
//!
//! - `throughput`: one task per POST, `--inflight` requests at once;
//! - `batched`: arrays of `--batch` tasks per POST (BullMQ: `addBulk`);
//! - `kill-worker`: halfway through the completions the worker process with the most tasks in
//!   its hands is SIGKILLed and replaced;
//! - `valkey-restart`: halfway, Valkey is emptied with FLUSHALL (the data goes; connections
//!   stay, unlike a process restart), then `agentwire tasks rebuild` refills the queues.
//!
//! Every row reports enqueue→complete throughput (completed / (last completion − first
//! enqueue)), latency p50/p99 (enqueue send → completion), and tasks completed, lost
//! (acknowledged, never completed within `--drain-secs` of the last enqueue and the fault),
//! started twice, completed twice and refused (enqueue answered with an error; not lost).
//! The agentwire rows run in `tasks_agentwire.rs` with worker processes of `tasks_worker.rs`;
//! the BullMQ rows run `peers/bullmq/bench.js` (`tasks_bullmq.rs`).

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Value, json};

use crate::procs::{self, Usage};
use crate::report::Series;
use crate::{tasks_agentwire, tasks_bullmq};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Row {
    Throughput,
    Batched,
    KillWorker,
    ValkeyRestart,
}

impl Row {
    pub fn name(self) -> &'static str {
        match self {
            Row::Throughput => "throughput",
            Row::Batched => "batched",
            Row::KillWorker => "kill-worker",
            Row::ValkeyRestart => "valkey-restart",
        }
    }

    /// The fault the row injects halfway, if any.
    pub fn fault(self) -> Option<&'static str> {
        match self {
            Row::KillWorker => Some("SIGKILL of a worker with tasks in its hands"),
            Row::ValkeyRestart => Some("FLUSHALL of Valkey, then agentwire tasks rebuild"),
            Row::Throughput | Row::Batched => None,
        }
    }
}

#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// The stack's Valkey (BullMQ runs on it too; the valkey-restart rows empty it).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub valkey: String,
    /// The stack's Kafka brokers (for `agentwire tasks rebuild`).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = "agent.tasks")]
    pub tasks_topic: String,
    /// The `agentwire` binary that runs `tasks rebuild` (default: the one next to this tool,
    /// same target directory and profile; else the running gateway's).
    #[arg(long)]
    pub agentwire_bin: Option<PathBuf>,
    /// Tasks per row.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Payload bytes per task (a string of that many bytes, with the task's sequence number).
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Unsettled tasks per worker (agentwire's prefetch, BullMQ's concurrency), 1-256.
    #[arg(long, default_value_t = 50)]
    pub prefetch: usize,
    /// Enqueue requests in flight at once.
    #[arg(long, default_value_t = 50)]
    pub inflight: usize,
    /// Tasks per array POST (BullMQ: per addBulk) in the batched row, 2-1000.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Tasks per enqueue request in the fault rows (1: one per POST, as BullMQ's fault modes).
    #[arg(long, default_value_t = 1)]
    pub fault_batch: usize,
    /// Milliseconds of work per task in the throughput and batched rows.
    #[arg(long, default_value_t = 0)]
    pub work_ms: u64,
    /// Milliseconds of work per task in the fault rows (so that tasks are in flight).
    #[arg(long, default_value_t = 50)]
    pub fault_work_ms: u64,
    /// agentwire's lease per pushed task: BullMQ's lock in bench.js (`lockDuration`) is
    /// 5000 ms. A task whose lease is not released (a push claim in flight when its worker
    /// died) comes back when the lease expires.
    #[arg(long, default_value_t = 5_000)]
    pub lease_ms: u64,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "throughput,batched,kill-worker,valkey-restart"
    )]
    pub rows: Vec<Row>,
    /// Also run every row on BullMQ (peers/bullmq) on the same Valkey.
    #[arg(long)]
    pub peer: bool,
    /// Seconds after the last enqueue (and the fault) before tasks not completed are lost.
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,
    /// Longest wait for `agentwire tasks rebuild` (also how long a worker retries a complete
    /// answered `not_found`).
    #[arg(long, default_value_t = 120)]
    pub rebuild_timeout_secs: u64,
    /// Longest a BullMQ row may run (bench.js `--timeout`).
    #[arg(long, default_value_t = 600)]
    pub row_timeout_secs: u64,
    /// The executable started as `tasks-worker` (default: this one).
    #[arg(long, hide = true)]
    pub worker_exe: Option<PathBuf>,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One row's enqueue batch and work.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub row: Row,
    pub batch: usize,
    pub work_ms: u64,
}

impl Plan {
    pub fn of(row: Row, args: &Args) -> Self {
        let (batch, work_ms) = match row {
            Row::Throughput => (1, args.work_ms),
            Row::Batched => (args.batch, args.work_ms),
            Row::KillWorker | Row::ValkeyRestart => (args.fault_batch, args.fault_work_ms),
        };
        Self {
            row,
            batch,
            work_ms,
        }
    }
}

/// One row on one system.
#[derive(Clone, Debug, Serialize)]
pub struct RowResult {
    pub system: String,
    pub row: String,
    pub batch: usize,
    pub work_ms: u64,
    /// Completed / (last completion − first enqueue).
    pub tasks_per_s: Option<f64>,
    pub seconds: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Tasks whose enqueue was acknowledged.
    pub acked: u64,
    pub completed: u64,
    pub lost: u64,
    pub started_twice: u64,
    /// `None`: not counted (BullMQ's throughput mode tracks no runs).
    pub completed_twice: Option<u64>,
    pub refused: u64,
    /// The stack's processes during the row (CPU seconds, peak RSS).
    pub processes: Vec<Usage>,
    /// CPU seconds of the row's worker processes (agentwire's `tasks-worker`s; BullMQ's Node
    /// producer and workers), reaped children of this tool.
    pub clients_cpu_seconds: f64,
    pub detail: Value,
}

impl RowResult {
    fn failed(system: &str, plan: &Plan, err: &anyhow::Error) -> Self {
        Self {
            system: system.into(),
            row: plan.row.name().into(),
            batch: plan.batch,
            work_ms: plan.work_ms,
            tasks_per_s: None,
            seconds: 0.0,
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
            acked: 0,
            completed: 0,
            lost: 0,
            started_twice: 0,
            completed_twice: None,
            refused: 0,
            processes: Vec::new(),
            clients_cpu_seconds: 0.0,
            detail: json!({"error": format!("{err:#}")}),
        }
    }

    fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
        format!(
            "  {} {}: {} tasks/s, p50 {} ms, p99 {} ms, completed {}/{}, lost {}, started twice {}, completed twice {}, refused {}",
            self.system,
            self.row,
            self.tasks_per_s
                .map_or("–".to_owned(), |v| format!("{v:.0}")),
            ms(self.p50_ms),
            ms(self.p99_ms),
            self.completed,
            self.acked,
            self.lost,
            self.started_twice,
            self.completed_twice
                .map_or("–".to_owned(), |v| v.to_string()),
            self.refused
        )
    }
}

/// agentwire's throughput over BullMQ's in one row.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub row: String,
    pub agentwire_tasks_per_s: Option<f64>,
    pub bullmq_tasks_per_s: Option<f64>,
    pub ratio: Option<f64>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct TasksReport {
    pub scenario: String,
    pub parameters: Value,
    /// What ran: the load tool's profile, the stack's binary, the rebuild's binary.
    pub ran: Value,
    pub rows: Vec<RowResult>,
    pub ratios: Vec<Ratio>,
    /// The stack's processes over the whole run.
    pub processes: Vec<Usage>,
    #[serde(skip)]
    pub series: Vec<Series>,
}

fn profile_of(path: &std::path::Path) -> &'static str {
    let text = path.to_string_lossy();
    if text.contains("/perf/") {
        "perf"
    } else if text.contains("/release/") {
        "release"
    } else if text.contains("/debug/") {
        "dev"
    } else {
        "unknown"
    }
}

/// The running gateway's executable, found by its command line.
fn gateway_exe() -> Option<PathBuf> {
    let (_, pid) = procs::watched().into_iter().find(|(n, _)| n == "gateway")?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    // A binary rebuilt since the gateway started reads "<path> (deleted)".
    let text = exe.to_string_lossy();
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(&text),
    ))
}

fn agentwire_bin(args: &Args) -> Option<PathBuf> {
    if let Some(bin) = &args.agentwire_bin {
        return Some(bin.clone());
    }
    let sibling = std::env::current_exe().ok()?.with_file_name("agentwire");
    if sibling.is_file() {
        return Some(sibling);
    }
    gateway_exe()
}

fn validate(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.tasks > 0, "--tasks must be at least 1");
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(
        (1..=256).contains(&args.prefetch),
        "--prefetch must be 1 to 256"
    );
    anyhow::ensure!(
        (1..=1000).contains(&args.batch) && (1..=1000).contains(&args.fault_batch),
        "--batch and --fault-batch must be 1 to 1000"
    );
    anyhow::ensure!(!args.rows.is_empty(), "--rows names no row");
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<TasksReport> {
    validate(&args)?;
    let mut rows = args.rows.clone();
    rows.dedup();
    if args.peer {
        tasks_bullmq::ensure_installed()?;
    }
    let bin = agentwire_bin(&args);
    let gateway = gateway_exe();
    if rows.contains(&Row::ValkeyRestart) {
        let Some(bin) = &bin else {
            anyhow::bail!(
                "valkey-restart needs the agentwire binary for `tasks rebuild`: build it \
                 (cargo build --profile perf -p agentwire) or pass --agentwire-bin"
            );
        };
        println!("tasks: `tasks rebuild` runs {}", bin.display());
        if let Some(gateway) = &gateway
            && gateway != bin
        {
            println!("tasks: note: the running gateway is {}", gateway.display());
        }
    }
    let run_id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let load_profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release or perf"
    };
    let ran = json!({
        "load_tool_profile": load_profile,
        "gateway_exe": gateway.as_ref().map(|p| p.display().to_string()),
        "stack_profile": gateway.as_deref().map(profile_of),
        "rebuild_bin": bin.as_ref().map(|p| p.display().to_string()),
        "peer": args.peer,
        "valkey_restart_means": "FLUSHALL: Valkey's data is emptied while it keeps running and every client keeps its connection (a process restart would also drop the connections)",
    });
    println!(
        "tasks: {} tasks of {} B per row, {} workers x prefetch {}, {} enqueue requests in flight; rows {}; stack {}",
        args.tasks,
        args.payload,
        args.workers,
        args.prefetch,
        args.inflight,
        rows.iter().map(|r| r.name()).collect::<Vec<_>>().join(","),
        gateway.as_deref().map_or("unknown", profile_of),
    );
    let snapshot = procs::Snapshot::take();
    let mut results = Vec::new();
    let mut series = Vec::new();
    for row in rows {
        let plan = Plan::of(row, &args);
        match tasks_agentwire::run(&args, &plan, &run_id, bin.as_deref()).await {
            Ok((result, histogram)) => {
                series.push(Series::new(
                    &format!("agentwire {}", row.name()),
                    histogram,
                    result.seconds,
                ));
                results.push(result);
            }
            Err(err) => {
                eprintln!("tasks {} (agentwire) failed: {err:#}", row.name());
                results.push(RowResult::failed("agentwire", &plan, &err));
            }
        }
        println!(
            "{}",
            results.last().map(RowResult::line).unwrap_or_default()
        );
        if args.peer {
            let result = tasks_bullmq::run(&args, &plan, &run_id)
                .await
                .unwrap_or_else(|err| {
                    eprintln!("tasks {} (bullmq) failed: {err:#}", row.name());
                    RowResult::failed("bullmq", &plan, &err)
                });
            println!("{}", result.line());
            results.push(result);
        }
    }
    let ratios = ratios(&results);
    let report = TasksReport {
        scenario: "tasks".into(),
        parameters: json!(args),
        ran,
        rows: results,
        ratios,
        processes: snapshot.usage(),
        series,
    };
    crate::tasks_summary::finish(&report, args.out.clone())?;
    Ok(report)
}

fn ratios(results: &[RowResult]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for ours in results.iter().filter(|r| r.system == "agentwire") {
        let Some(theirs) = results
            .iter()
            .find(|r| r.system == "bullmq" && r.row == ours.row)
        else {
            continue;
        };
        let ratio = match (ours.tasks_per_s, theirs.tasks_per_s) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        out.push(Ratio {
            row: ours.row.clone(),
            agentwire_tasks_per_s: ours.tasks_per_s,
            bullmq_tasks_per_s: theirs.tasks_per_s,
            ratio,
        });
    }
    out
}
