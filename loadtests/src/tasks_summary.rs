//! The `tasks` scenario's printed table and its files: `result.json`, `summary.md` and
//! `latency.png` (agentwire's rows; bench.js reports only quantiles) under `--out`
//! (default `loadtests/results/tasks-<unix time>/`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::tasks::{RowResult, TasksReport};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn cpu_of(row: &RowResult, name: &str) -> f64 {
    row.processes
        .iter()
        .filter(|p| p.name == name)
        .map(|p| p.cpu_seconds)
        .sum()
}

pub fn markdown(report: &TasksReport) -> String {
    let p = &report.parameters;
    let r = &report.ran;
    let mut md = String::from("## tasks\n\n");
    let _ = writeln!(
        md,
        "What ran: load tool in the {} profile; stack (gateway) in the {} profile ({}); \
         `tasks rebuild` by {}. {} tasks of {} B per row, {} worker processes x prefetch \
         (BullMQ: concurrency) {}, {} enqueue requests in flight, lease {} ms; a task not \
         completed {} s after the last enqueue (and the fault) is lost.\n",
        text(&r["load_tool_profile"]),
        text(&r["stack_profile"]),
        text(&r["gateway_exe"]),
        text(&r["rebuild_bin"]),
        p["tasks"],
        p["payload"],
        p["workers"],
        p["prefetch"],
        p["inflight"],
        p["lease_ms"],
        p["drain_secs"],
    );
    md.push_str("| row | system | batch | work ms | tasks/s | p50 ms | p99 ms | max ms | completed | lost | started twice | completed twice | refused |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &report.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} |",
            row.row,
            row.system,
            row.batch,
            row.work_ms,
            opt(row.tasks_per_s, 0),
            opt(row.p50_ms, 1),
            opt(row.p99_ms, 1),
            opt(row.max_ms, 1),
            row.completed,
            row.acked,
            row.lost,
            row.started_twice,
            row.completed_twice
                .map_or("–".to_owned(), |v| v.to_string()),
            row.refused,
        );
    }
    if !report.ratios.is_empty() {
        md.push_str("\n| row | agentwire tasks/s | BullMQ tasks/s | agentwire / BullMQ |\n|---|---:|---:|---:|\n");
        for ratio in &report.ratios {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                ratio.row,
                opt(ratio.agentwire_tasks_per_s, 0),
                opt(ratio.bullmq_tasks_per_s, 0),
                ratio.ratio.map_or("–".to_owned(), |v| format!("{v:.2}x")),
            );
        }
    }
    md.push_str(&targets(report));
    md.push_str(
        "\n- Fault rows: tasks/s includes the work per task and the recovery; it is not a \
         throughput figure.\n- valkey-restart empties Valkey with FLUSHALL: the data goes while \
         Valkey keeps running and every client keeps its connection, unlike a process restart. \
         agentwire then runs `agentwire tasks rebuild` (from the log); BullMQ has nothing to \
         rebuild from.\n- agentwire latency: enqueue request sent → the worker's completion \
         line read by this tool (same host, monotonic clock). BullMQ: `job.timestamp` → \
         `job.finishedOn` (ms).\n",
    );
    for row in &report.rows {
        let keys: &[&str] = if row.system == "bullmq" {
            &[
                "error",
                "stopped",
                "fault_info",
                "ran_unrecorded",
                "bullmq_failed",
                "last_add_error",
                "worker_errors",
                "queue_errors",
            ]
        } else {
            &[
                "error",
                "stopped",
                "fault_info",
                "completed_unseen",
                "completed_unacked",
                "complete_errors",
                "lost_states_now",
                "refusals",
                "worker_unexpected_exits",
            ]
        };
        let notes: Vec<String> = keys
            .iter()
            .filter_map(|key| {
                let v = row.detail.get(*key)?;
                // A row that ended the ordinary way says nothing about it.
                let ordinary = *key == "stopped"
                    && matches!(
                        v.as_str(),
                        Some("all acknowledged tasks completed" | "all completed")
                    );
                let empty = ordinary
                    || v.is_null()
                    || v.as_u64() == Some(0)
                    || v.as_object().is_some_and(serde_json::Map::is_empty);
                (!empty).then(|| format!("{key}: {}", text(v)))
            })
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(md, "- {} {}: {}", row.system, row.row, notes.join("; "));
        }
    }
    md.push_str("\nCPU seconds during each row (workers: the row's worker processes, and agentwire's `tasks rebuild`; BullMQ's are Node, its producer included):\n\n| row | system | gateway | relay | broker | valkey | workers | load tool |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for row in &report.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            row.row,
            row.system,
            cpu_of(row, "gateway"),
            cpu_of(row, "relay"),
            cpu_of(row, "broker"),
            cpu_of(row, "valkey"),
            row.clients_cpu_seconds,
            cpu_of(row, "load tool (this process)"),
        );
    }
    if !report.processes.is_empty() {
        md.push_str(
            "\n| process | pid | CPU s (whole run) | peak RSS MiB |\n|---|---:|---:|---:|\n",
        );
        for p in &report.processes {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.1} |",
                p.name, p.pid, p.cpu_seconds, p.peak_rss_mib
            );
        }
    }
    md
}

/// The targets, checked against this run (nothing is asserted).
fn targets(report: &TasksReport) -> String {
    let ours: Vec<&RowResult> = report
        .rows
        .iter()
        .filter(|r| r.system == "agentwire")
        .collect();
    let losses: BTreeMap<&str, u64> = ours
        .iter()
        .filter(|r| r.lost > 0 || r.detail.get("error").is_some())
        .map(|r| (r.row.as_str(), r.lost))
        .collect();
    let mut out = String::from("\nTargets (the issue; not asserted):\n");
    if losses.is_empty() {
        let _ = writeln!(
            out,
            "- agentwire loses nothing in any row: met ({} rows)",
            ours.len()
        );
    } else {
        let _ = writeln!(
            out,
            "- agentwire loses nothing in any row: NOT met: {losses:?} (an error counts)"
        );
    }
    let ratio = |row: &str| {
        report
            .ratios
            .iter()
            .find(|r| r.row == row)
            .and_then(|r| r.ratio)
    };
    if let Some(x) = ratio("throughput") {
        let verdict = if x >= 0.5 { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "- throughput at least 0.5x BullMQ's, every state change on the log: {x:.2}x, {verdict}"
        );
    }
    if let Some(x) = ratio("batched") {
        let verdict = if x > 1.0 { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "- ahead of BullMQ with a batched enqueue: {x:.2}x, {verdict}"
        );
    }
    out
}

/// Prints the summary and writes the files; returns the folder.
pub fn finish(report: &TasksReport, out: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let md = markdown(report);
    println!("{md}");
    let dir = out.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        crate::package_dir()
            .join("results")
            .join(format!("tasks-{now}"))
    });
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("result.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(dir.join("summary.md"), &md)?;
    let drawn: Vec<_> = report
        .series
        .iter()
        .filter(|s| !s.histogram.is_empty())
        .cloned()
        .collect();
    if !drawn.is_empty() {
        crate::chart::latency_png(&dir.join("latency.png"), "tasks", &drawn)?;
    }
    println!("written: {}", dir.display());
    Ok(dir)
}
