//! One row of the `tasks` scenario on agentwire: W worker processes (`tasks-worker`) consume a
//! fresh tenant's capability over WebSocket while `--inflight` lanes enqueue over HTTP (one
//! task per POST, or arrays of `batch`). Halfway through the completions the row's fault
//! strikes: a worker SIGKILLed (and replaced), or Valkey emptied with FLUSHALL and
//! `agentwire tasks rebuild` run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentwire_client::{HttpClient, NewTask};
use agentwire_protocol::{Capability, TaskState, Tenant};
use anyhow::Context as _;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use crate::procs;
use crate::tasks::{Args, Plan, Row, RowResult};
use crate::tasks_tally::{Line, Tally, rate};

/// How long without a new completion before the missing tasks are looked up on the server.
const STALL: Duration = Duration::from_secs(3);
/// Most missing tasks looked up at once (more: some are still coming).
const LOOKUP_MAX: usize = 2000;

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An error's text with digits folded, so one kind of error is one entry.
fn fold(text: &str) -> String {
    text.chars()
        .take(160)
        .map(|c| if c.is_ascii_digit() { 'N' } else { c })
        .collect()
}

/// The worker processes of one row and the readers of their lines.
struct Workers {
    exe: PathBuf,
    args: Vec<String>,
    children: BTreeMap<usize, Child>,
    readers: JoinSet<()>,
    tally: Arc<Mutex<Tally>>,
    next: usize,
    /// Workers that exited without being killed (each was replaced).
    unexpected_exits: Vec<String>,
}

impl Workers {
    fn spawn(&mut self) -> anyhow::Result<usize> {
        let index = self.next;
        self.next += 1;
        let mut child = Command::new(&self.exe)
            .arg("tasks-worker")
            .args(&self.args)
            .args(["--name", &format!("w{index}")])
            // Kept open (in `Child`) while the worker should live: if this tool dies, the
            // worker reads end of file and exits.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} tasks-worker", self.exe.display()))?;
        let stdout = child.stdout.take().context("the worker's stdout")?;
        let tally = self.tally.clone();
        self.readers.spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(text)) = lines.next_line().await {
                let at = Instant::now();
                if let Some(line) = Line::parse(&text) {
                    lock(&tally).line(index, line, at);
                }
            }
        });
        self.children.insert(index, child);
        Ok(index)
    }

    /// SIGKILL (tokio's `start_kill`), reaped in the background.
    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children.remove(&index) {
            let _ = child.start_kill();
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
    }

    /// Replaces workers that exited on their own.
    fn replace_exited(&mut self) -> anyhow::Result<()> {
        let mut gone = Vec::new();
        for (index, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                gone.push((*index, status));
            }
        }
        for (index, status) in gone {
            self.children.remove(&index);
            self.unexpected_exits.push(format!("w{index}: {status}"));
            self.spawn()?;
        }
        Ok(())
    }

    async fn stop(mut self) -> Vec<String> {
        for child in self.children.values_mut() {
            let _ = child.start_kill();
        }
        for child in self.children.values_mut() {
            let _ = child.wait().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.readers.join_next().await.is_some() {}
        })
        .await;
        self.readers.abort_all();
        self.unexpected_exits
    }

    async fn wait_ready(&self, count: usize, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while lock(&self.tally).ready_workers < count {
            if started.elapsed() > within {
                anyhow::bail!("{count} workers were not consuming within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(started.elapsed())
    }
}

/// The gateway's WebSocket URL.
fn ws_url(gateway: &str) -> String {
    format!(
        "{}/v1/ws",
        gateway.trim_end_matches('/').replacen("http", "ws", 1)
    )
}

/// Enqueues `tasks` tasks on `lanes` concurrent lanes, `batch` per request; returns when
/// every request was answered.
#[allow(clippy::too_many_arguments)]
async fn enqueue(
    http: HttpClient,
    tenant: Tenant,
    capability: Capability,
    tasks: usize,
    batch: usize,
    lanes: usize,
    payload: Arc<str>,
    tally: Arc<Mutex<Tally>>,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..lanes.max(1) {
        let (http, tenant, capability, payload, tally, next) = (
            http.clone(),
            tenant.clone(),
            capability.clone(),
            payload.clone(),
            tally.clone(),
            next.clone(),
        );
        set.spawn(async move {
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= tasks {
                    break;
                }
                let to = tasks.min(from + batch);
                let new: Vec<NewTask> = (from..to)
                    .map(|seq| {
                        NewTask::new(tenant.clone(), capability.clone())
                            .payload(json!({"seq": seq, "payload": &*payload}))
                    })
                    .collect();
                let sent = Instant::now();
                let answer = if batch == 1 {
                    http.enqueue(&new[0]).await.map(|ack| vec![ack])
                } else {
                    http.enqueue_batch(&new).await
                };
                let now = Instant::now();
                let mut tally = lock(&tally);
                match answer {
                    Ok(acks) => {
                        for ack in acks {
                            match Uuid::parse_str(&ack.id) {
                                Ok(id) => tally.acked(id, sent, now),
                                Err(_) => tally.refused(1, "an id that is not a UUID".into()),
                            }
                        }
                    }
                    Err(err) => tally.refused((to - from) as u64, fold(&format!("{err:#}"))),
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Looks the tasks up on the server: those completed are marked so; the others' states
/// are counted by name (`not_found` for an unknown task, `error` for a failed lookup).
async fn look_up(
    http: &HttpClient,
    tenant: &Tenant,
    ids: Vec<Uuid>,
    tally: &Mutex<Tally>,
) -> BTreeMap<String, u64> {
    let answers: Vec<(Uuid, String)> = futures::stream::iter(ids)
        .map(|id| async move {
            let state = match http.task(tenant, &id.to_string()).await {
                Ok(task) if task.state == TaskState::Completed => "completed".to_owned(),
                Ok(task) => json!(task.state).as_str().unwrap_or("?").to_owned(),
                Err(err) => err
                    .code()
                    .map_or_else(|| "error".to_owned(), |c| c.as_str().to_owned()),
            };
            (id, state)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut states = BTreeMap::new();
    let mut tally = lock(tally);
    for (id, state) in answers {
        if state == "completed" {
            tally.mark_completed_unseen(id);
        }
        *states.entry(state).or_insert(0) += 1;
    }
    states
}

/// FLUSHALL on a plain connection (the data goes, every client's connection stays), then
/// `agentwire tasks rebuild` with the stack's settings. Returns what happened, for the report.
async fn flush_and_rebuild(args: &Args, bin: &Path) -> Value {
    let started = Instant::now();
    let flushed = async {
        let mut conn = redis::Client::open(args.valkey.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
        anyhow::Ok(())
    }
    .await;
    let flush_ms = started.elapsed().as_millis();
    let rebuild_started = Instant::now();
    let rebuild = tokio::time::timeout(
        Duration::from_secs(args.rebuild_timeout_secs),
        Command::new(bin)
            .args(["tasks", "rebuild"])
            .env("AGENTWIRE_KAFKA_BROKERS", &args.brokers)
            .env("AGENTWIRE_TASKS_TOPIC", &args.tasks_topic)
            .env("AGENTWIRE_VALKEY_URL", &args.valkey)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let rebuild_ms = rebuild_started.elapsed().as_millis();
    let mut info = json!({
        "flushall": flushed.as_ref().map_or_else(|e| format!("failed: {e:#}"), |()| "ok".into()),
        "flushall_ms": flush_ms as u64,
        "rebuild_ms": rebuild_ms as u64,
    });
    match rebuild {
        Err(_) => {
            info["rebuild"] = json!(format!("timed out after {} s", args.rebuild_timeout_secs))
        }
        Ok(Err(err)) => info["rebuild"] = json!(format!("did not start: {err}")),
        Ok(Ok(output)) => {
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            info["rebuild"] = json!(if output.status.success() {
                "ok".to_owned()
            } else {
                output.status.to_string()
            });
            info["rebuild_summary"] = json!(stdout.lines().last().unwrap_or_default());
            if !output.status.success() {
                let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
                info["rebuild_stderr_tail"] = json!(tail.into_iter().rev().collect::<Vec<_>>());
            }
        }
    }
    info
}

/// Children's CPU seconds (user + system) of this process so far: the reaped worker processes.
pub fn children_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // cutime and cstime: fields 16 and 17 of stat, 14 and 15 after the command name.
    (ticks(13) + ticks(14)) / 100.0
}

/// Runs one row on agentwire.
pub async fn run(
    args: &Args,
    plan: &Plan,
    run_id: &str,
    agentwire_bin: Option<&Path>,
) -> anyhow::Result<(RowResult, hdrhistogram::Histogram<u64>)> {
    let tenant = Tenant::new(format!("lt-tasks-{run_id}-{}", plan.row.name()))?;
    let capability = Capability::new(format!("load-{}", plan.row.name()))?;
    let http = HttpClient::with_timeout(&args.gateway, Duration::from_secs(30))?;
    let tally = Arc::new(Mutex::new(Tally::with_capacity(args.tasks)));
    let snapshot = procs::Snapshot::take();
    let children_cpu = children_cpu_seconds();
    let mut workers = Workers {
        exe: match &args.worker_exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().context("the load tool's own path")?,
        },
        args: vec![
            "--ws".into(),
            ws_url(&args.gateway),
            "--tenant".into(),
            tenant.to_string(),
            "--capability".into(),
            capability.to_string(),
            "--prefetch".into(),
            args.prefetch.to_string(),
            "--lease-ms".into(),
            args.lease_ms.to_string(),
            "--work-ms".into(),
            plan.work_ms.to_string(),
            "--retry-secs".into(),
            args.rebuild_timeout_secs.to_string(),
        ],
        children: BTreeMap::new(),
        readers: JoinSet::new(),
        tally: tally.clone(),
        next: 0,
        unexpected_exits: Vec::new(),
    };
    for _ in 0..args.workers.max(1) {
        workers.spawn()?;
    }
    workers
        .wait_ready(args.workers.max(1), Duration::from_secs(30))
        .await?;
    println!(
        "tasks {} (agentwire): {} workers consuming {tenant}/{capability}; {} tasks of {} B, batch {}, {} requests in flight, work {} ms",
        plan.row.name(),
        args.workers,
        args.tasks,
        args.payload,
        plan.batch,
        args.inflight,
        plan.work_ms
    );

    let t0 = Instant::now();
    let producer: JoinHandle<Instant> = tokio::spawn({
        let (http, tenant, capability, tally) = (
            http.clone(),
            tenant.clone(),
            capability.clone(),
            tally.clone(),
        );
        let payload: Arc<str> = "x".repeat(args.payload).into();
        let (tasks, batch, lanes) = (args.tasks, plan.batch, args.inflight);
        async move {
            enqueue(
                http, tenant, capability, tasks, batch, lanes, payload, tally,
            )
            .await;
            Instant::now()
        }
    });
    let mut producer = Some(producer);
    let mut enqueued_at: Option<Instant> = None;
    let mut fault_info = json!(null);
    let mut fault: Option<JoinHandle<Value>> = None;
    let mut fault_started = plan.row.fault().is_none();
    let mut fault_done_at: Option<Instant> = None;
    let mut replacement: Option<(Instant, usize)> = None;
    let mut progress = (0u64, Instant::now());
    let mut last_lookup = Instant::now();
    let drain = Duration::from_secs(args.drain_secs);
    let stopped;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        workers.replace_exited()?;
        let now = Instant::now();
        if producer.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(p) = producer.take()
        {
            let at = p.await.unwrap_or(now);
            enqueued_at = Some(at);
            let t = lock(&tally);
            println!(
                "  enqueued {} in {:.2} s ({} refused)",
                t.acked,
                at.duration_since(t0).as_secs_f64(),
                t.refused
            );
        }
        let (done, acked, completed) = {
            let t = lock(&tally);
            (t.acked_done, t.acked, t.completed_unique)
        };
        if done != progress.0 {
            progress = (done, now);
        }
        if !fault_started && completed >= (args.tasks as u64).div_ceil(2) {
            fault_started = true;
            match plan.row {
                Row::KillWorker => {
                    let busiest = lock(&tally).busiest(workers.children.keys().copied());
                    if let Some((victim, in_flight)) = busiest {
                        workers.kill(victim);
                        let ready = lock(&tally).ready_workers;
                        workers.spawn()?;
                        replacement = Some((now, ready));
                        fault_info = json!({"at_completed": completed, "killed_worker": format!("w{victim}"), "killed_in_flight": in_flight});
                        println!(
                            "  kill-worker: SIGKILL w{victim} with {in_flight} tasks in its hands, after {completed} completions"
                        );
                    }
                    fault_done_at = Some(now);
                }
                Row::ValkeyRestart => {
                    let before = http.queue_stats(&tenant, &capability).await.ok();
                    fault_info = json!({
                        "at_completed": completed,
                        "acked_at_flush": acked,
                        "queue_before": before.map(|q| json!({"ready": q.ready, "in_flight": q.in_flight, "delayed": q.delayed})),
                    });
                    println!(
                        "  valkey-restart: FLUSHALL after {completed} completions ({acked} acknowledged), then agentwire tasks rebuild"
                    );
                    let (args, bin) = (args.clone(), agentwire_bin.map(Path::to_path_buf));
                    fault = Some(tokio::spawn(async move {
                        match bin {
                            Some(bin) => flush_and_rebuild(&args, &bin).await,
                            None => json!({"error": "no agentwire binary for the rebuild"}),
                        }
                    }));
                }
                Row::Throughput | Row::Batched => {}
            }
        }
        if let Some((since, ready_before)) = replacement
            && lock(&tally).ready_workers > ready_before
        {
            fault_info["replacement_ready_ms"] =
                json!(now.duration_since(since).as_millis() as u64);
            replacement = None;
        }
        if fault.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(f) = fault.take()
        {
            let info = f.await.unwrap_or_else(|e| json!({"error": e.to_string()}));
            println!("  valkey-restart: {info}");
            if let (Some(into), Some(from)) = (fault_info.as_object_mut(), info.as_object()) {
                into.extend(from.clone());
            }
            fault_done_at = Some(Instant::now());
            // Progress is judged from the end of the fault.
            progress.1 = Instant::now();
        }
        // A fault in progress (the rebuild) is waited for; it has a timeout of its own.
        let settled = fault.is_none();
        let Some(enqueued) = enqueued_at else {
            continue;
        };
        if settled && done >= acked {
            stopped = if fault_started {
                "all acknowledged tasks completed".to_owned()
            } else {
                "all acknowledged tasks completed; the fault never struck (under half completed)"
                    .to_owned()
            };
            break;
        }
        let since = fault_done_at.map_or(enqueued, |f| f.max(enqueued));
        if settled && now.duration_since(since) > drain {
            stopped = format!(
                "timeout: {} s after the last enqueue and the fault",
                drain.as_secs()
            );
            break;
        }
        // Completions a killed worker never reported: asked of the server.
        if settled
            && now.duration_since(progress.1) > STALL
            && now.duration_since(last_lookup) > STALL
            && acked - done <= LOOKUP_MAX as u64
        {
            last_lookup = now;
            let missing = lock(&tally).missing(LOOKUP_MAX);
            look_up(&http, &tenant, missing, &tally).await;
        }
    }
    let exits = workers.stop().await;
    let lost_states = {
        let missing = lock(&tally).missing(200);
        if missing.is_empty() {
            None
        } else {
            Some(look_up(&http, &tenant, missing, &tally).await)
        }
    };
    let tally = lock(&tally);
    let counts = tally.counts();
    let latency = tally.latencies()?;
    let seconds = tally
        .last_complete
        .map(|t| t.saturating_duration_since(t0))
        .unwrap_or_default();
    let enqueue_seconds = tally
        .last_ack
        .map(|t| t.saturating_duration_since(t0))
        .unwrap_or_default();
    let mut detail = json!({
        "tenant": tenant.to_string(),
        "capability": capability.to_string(),
        "enqueue_seconds": enqueue_seconds.as_secs_f64(),
        "enqueue_per_s": rate(counts.acked, enqueue_seconds).round(),
        "completed_unseen": counts.completed_unseen,
        "completed_unacked": counts.completed_unacked,
        "complete_errors": tally.errors,
        "stopped": stopped,
    });
    if !fault_info.is_null() {
        detail["fault_info"] = fault_info;
    }
    if !tally.refusals.is_empty() {
        detail["refusals"] = json!(tally.refusals);
    }
    if !exits.is_empty() {
        detail["worker_unexpected_exits"] = json!(exits);
    }
    if let Some(states) = lost_states {
        detail["lost_states_now"] = json!(states);
    }
    let ms = |q: f64| (!latency.is_empty()).then(|| latency.value_at_quantile(q) as f64 / 1000.0);
    let result = RowResult {
        system: "agentwire".into(),
        row: plan.row.name().into(),
        batch: plan.batch,
        work_ms: plan.work_ms,
        tasks_per_s: (counts.completed > 0).then(|| rate(counts.completed, seconds).round()),
        seconds: seconds.as_secs_f64(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: (!latency.is_empty()).then(|| latency.max() as f64 / 1000.0),
        acked: counts.acked,
        completed: counts.completed + counts.completed_unseen,
        lost: counts.lost,
        started_twice: counts.started_twice,
        completed_twice: Some(counts.completed_twice),
        refused: tally.refused,
        processes: snapshot.usage(),
        clients_cpu_seconds: ((children_cpu_seconds() - children_cpu) * 100.0).round() / 100.0,
        detail,
    };
    Ok((result, latency))
}
