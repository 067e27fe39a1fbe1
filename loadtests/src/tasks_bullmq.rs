//! One row of the `tasks` scenario on the BullMQ peer: `node peers/bullmq/bench.js` with the
//! row's parameters on the same Valkey (npm packages installed by `peers/bullmq/install.sh`
//! the first time), its one JSON line read back. valkey-restart empties Valkey the same way
//! as for agentwire: FLUSHALL, through `scripts/valkey-flushall.sh`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::process::Command;

use crate::procs;
use crate::tasks::{Args, Plan, Row, RowResult};
use crate::tasks_agentwire::children_cpu_seconds;

fn peer_dir() -> PathBuf {
    crate::package_dir().join("peers/bullmq")
}

/// Host and port of a `redis://[user:pass@]host[:port][/db]` URL.
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("redis://")
        .with_context(|| format!("{url} is not a redis:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    match hostport.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_owned(), port.parse().context("the port")?)),
        None => Ok((hostport.to_owned(), 6379)),
    }
}

/// A shell command that empties the Valkey at `url` (what bench.js runs for valkey-restart).
pub fn flush_command(url: &str) -> anyhow::Result<String> {
    let (host, port) = host_port(url)?;
    let script = crate::package_dir().join("scripts/valkey-flushall.sh");
    Ok(format!("'{}' {host} {port}", script.display()))
}

/// Installs the npm packages if they are missing.
pub fn ensure_installed() -> anyhow::Result<()> {
    let dir = peer_dir();
    if dir.join("node_modules/bullmq").is_dir() {
        return Ok(());
    }
    println!("peer: installing BullMQ (loadtests/peers/bullmq/install.sh)");
    let status = std::process::Command::new(dir.join("install.sh"))
        .status()
        .context("run loadtests/peers/bullmq/install.sh")?;
    if !status.success() {
        bail!("loadtests/peers/bullmq/install.sh failed");
    }
    Ok(())
}

/// Runs one row on BullMQ.
pub async fn run(args: &Args, plan: &Plan, run_id: &str) -> anyhow::Result<RowResult> {
    let queue = format!("lt-{run_id}-{}", plan.row.name());
    let mut command = Command::new("node");
    command
        .arg(peer_dir().join("bench.js"))
        .args(["--valkey", &args.valkey])
        .args(["--tasks", &args.tasks.to_string()])
        .args(["--payload", &args.payload.to_string()])
        .args(["--workers", &args.workers.to_string()])
        .args(["--concurrency", &args.prefetch.to_string()])
        .args(["--batch", &plan.batch.to_string()])
        .args(["--inflight", &args.inflight.to_string()])
        .args(["--queue", &queue])
        .args(["--work-ms", &plan.work_ms.to_string()])
        .args(["--idle-timeout", &args.drain_secs.to_string()])
        .args(["--timeout", &args.row_timeout_secs.to_string()]);
    match plan.row {
        Row::KillWorker => {
            command.args(["--fault", "kill-worker"]);
        }
        Row::ValkeyRestart => {
            command.args([
                "--fault",
                "valkey-restart",
                "--restart-cmd",
                &flush_command(&args.valkey)?,
            ]);
        }
        Row::Throughput | Row::Batched => {}
    }
    println!(
        "tasks {} (bullmq): queue {queue}, {} workers x concurrency {}, batch {}, {} adds in flight, work {} ms",
        plan.row.name(),
        args.workers,
        args.prefetch,
        plan.batch,
        args.inflight,
        plan.work_ms
    );
    let snapshot = procs::Snapshot::take();
    let children_cpu = children_cpu_seconds();
    let output = tokio::time::timeout(
        Duration::from_secs(args.row_timeout_secs + 60),
        command
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("bench.js did not finish in time")?
    .context("start node (is Node.js installed?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(last) = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
    else {
        bail!("bench.js ({}) printed no JSON line", output.status);
    };
    let line: Value = serde_json::from_str(last).context("bench.js's JSON line")?;
    let f = |k: &str| line.get(k).and_then(Value::as_f64);
    let n = |k: &str| line.get(k).and_then(Value::as_u64);
    Ok(RowResult {
        system: "bullmq".into(),
        row: plan.row.name().into(),
        batch: plan.batch,
        work_ms: plan.work_ms,
        tasks_per_s: f("tasks_per_s"),
        seconds: f("seconds").unwrap_or(0.0),
        p50_ms: f("p50_ms"),
        p99_ms: f("p99_ms"),
        max_ms: f("max_ms"),
        acked: n("acked").unwrap_or(0),
        completed: n("completed").unwrap_or(0),
        lost: n("lost").unwrap_or(0),
        started_twice: n("started_twice").unwrap_or(0),
        completed_twice: n("completed_twice"),
        refused: n("add_failed").unwrap_or(0),
        processes: snapshot.usage(),
        clients_cpu_seconds: ((children_cpu_seconds() - children_cpu) * 100.0).round() / 100.0,
        detail: line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valkey_urls_give_host_and_port() {
        let hp = |u: &str| host_port(u).expect(u);
        assert_eq!(hp("redis://127.0.0.1:6379"), ("127.0.0.1".into(), 6379));
        assert_eq!(hp("redis://h"), ("h".into(), 6379));
        assert_eq!(hp("redis://u:p@h:7000/2"), ("h".into(), 7000));
        assert!(host_port("http://h").is_err());
    }
}
