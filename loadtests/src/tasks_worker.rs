//! `tasks-worker` (hidden): one worker process of the `tasks` scenario, started by it so that
//! it can be SIGKILLed. It speaks the work-queue WebSocket ops itself: one `consume`, then for
//! every pushed task a `complete` (at once, or after `--work-ms`). It prints one line per event
//! on stdout (line-buffered, so a line written before a kill is not lost):
//!
//! - `R`: consuming (the `consume` was acknowledged);
//! - `S <task id>`: a task was pushed (started);
//! - `C <task id>`: its `complete` was acknowledged with `state: completed`;
//! - `E <task id> <code>`: a `complete` was answered with an error. `not_found` (Valkey lost
//!   the task; a rebuild restores it with its lease) and `unavailable` are retried with the
//!   same lease, with backoff, for `--retry-secs`.
//!
//! It exits when its stdin ends (the parent died). Pushed `task` frames carry the payload and are scanned, not parsed: the id is the first
//! field of the task, the lease the last `"lease_id"` (the status follows the document).

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The gateway's WebSocket URL (`ws://127.0.0.1:8080/v1/ws`).
    #[arg(long)]
    pub ws: String,
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub capability: String,
    #[arg(long, default_value_t = 50)]
    pub prefetch: usize,
    #[arg(long, default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Milliseconds of "work" between a task's arrival and its `complete`.
    #[arg(long, default_value_t = 0)]
    pub work_ms: u64,
    /// The `worker` name given in `consume`.
    #[arg(long, default_value = "loadtest")]
    pub name: String,
    /// How long a `complete` answered `not_found` or `unavailable` is retried.
    #[arg(long, default_value_t = 120)]
    pub retry_secs: u64,
}

const CONSUME_ID: &str = "consume";
const TASK_PREFIX: &str = r#"{"op":"task","task":{"id":""#;
const LEASE_KEY: &str = r#""lease_id":""#;

/// A `complete` sent and not yet answered `completed`.
struct Pending {
    lease: String,
    first: Instant,
    tries: u32,
}

/// The id and lease of a pushed `task` frame: scanned, else (a layout this scan does not
/// know) parsed.
fn task_and_lease(text: &str) -> Option<(String, String)> {
    if let Some(rest) = text.strip_prefix(TASK_PREFIX) {
        let id = &rest[..rest.find('"')?];
        let at = text.rfind(LEASE_KEY)? + LEASE_KEY.len();
        let lease = &text[at..at + text[at..].find('"')?];
        return Some((id.to_owned(), lease.to_owned()));
    }
    let value: Value = serde_json::from_str(text).ok()?;
    let task = value.get("task")?;
    Some((
        task.get("id")?.as_str()?.to_owned(),
        task.get("lease_id")?.as_str()?.to_owned(),
    ))
}

fn complete_frame(tenant: &str, task: &str, lease: &str) -> String {
    json!({"op": "complete", "id": task, "tenant": tenant, "task_id": task,
           "lease_id": lease, "result": "ok"})
    .to_string()
}

fn line(text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    // std's stdout is line-buffered: each line reaches the parent when written.
    let mut out = std::io::stdout().lock();
    out.write_fmt(text)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Sends `frame` after `delay` (at once when zero).
fn send_after(tx: &mpsc::UnboundedSender<String>, delay: Duration, frame: String) {
    if delay.is_zero() {
        let _ = tx.send(frame);
    } else {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(frame);
        });
    }
}

/// Exits when stdin ends: the parent keeps it open while this worker should live, so a
/// parent that dies (even by SIGKILL) leaves no worker behind.
fn exit_with_parent() {
    std::thread::spawn(|| {
        use std::io::Read as _;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(1..) = stdin.read(&mut buf) {}
        std::process::exit(0);
    });
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    exit_with_parent();
    let (ws, _) = connect_async_with_config(&args.ws, None, true)
        .await
        .with_context(|| format!("connect {}", args.ws))?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // One writer: frames queued meanwhile go out in one flush.
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            sink.feed(Message::text(frame)).await?;
            while let Ok(more) = rx.try_recv() {
                sink.feed(Message::text(more)).await?;
            }
            sink.flush().await?;
        }
        anyhow::Ok(())
    });
    let _ = tx.send(
        json!({"op": "consume", "id": CONSUME_ID, "tenant": args.tenant,
               "capabilities": [args.capability], "prefetch": args.prefetch,
               "lease_ms": args.lease_ms, "worker": args.name})
        .to_string(),
    );
    let work = Duration::from_millis(args.work_ms);
    let retry_for = Duration::from_secs(args.retry_secs);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    while let Some(message) = stream.next().await {
        let text = match message.context("read from the gateway")? {
            Message::Text(text) => text,
            Message::Close(close) => bail!("the gateway closed the connection: {close:?}"),
            _ => continue,
        };
        let text = text.as_str();
        if text.starts_with(r#"{"op":"task","#) {
            let Some((task, lease)) = task_and_lease(text) else {
                eprintln!("tasks-worker: a task frame without id or lease: {text:.200}");
                continue;
            };
            line(format_args!("S {task}"))?;
            send_after(&tx, work, complete_frame(&args.tenant, &task, &lease));
            pending.insert(
                task,
                Pending {
                    lease,
                    first: Instant::now(),
                    tries: 0,
                },
            );
            continue;
        }
        // Answers are small: parsed.
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            eprintln!("tasks-worker: not JSON: {text:.200}");
            continue;
        };
        let op = value.get("op").and_then(Value::as_str).unwrap_or_default();
        let id = value.get("id").and_then(Value::as_str).unwrap_or_default();
        match (op, id) {
            ("task_ack", CONSUME_ID) => line(format_args!("R"))?,
            ("error", CONSUME_ID) => bail!("consume refused: {text}"),
            ("task_ack", task) => {
                let state = value.get("state").and_then(Value::as_str);
                if state == Some("completed") {
                    pending.remove(task);
                    line(format_args!("C {task}"))?;
                } else {
                    line(format_args!("E {task} state:{}", state.unwrap_or("none")))?;
                }
            }
            ("error", task) => {
                let code = value.get("code").and_then(Value::as_str).unwrap_or("none");
                line(format_args!("E {task} {code}"))?;
                let retry = matches!(code, "not_found" | "unavailable");
                match pending.get_mut(task) {
                    Some(p) if retry && p.first.elapsed() < retry_for => {
                        p.tries += 1;
                        // 0.4 s, 0.8 s, then every second: soon after a rebuild.
                        let backoff = Duration::from_millis((200 << p.tries.min(3)).min(1000));
                        send_after(&tx, backoff, complete_frame(&args.tenant, task, &p.lease));
                    }
                    _ => {
                        pending.remove(task);
                    }
                }
            }
            _ => {}
        }
    }
    writer.abort();
    bail!("the gateway closed the connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_frames_are_scanned_for_id_and_lease() {
        let frame = r#"{"op":"task","task":{"id":"0193","tenant":"t","payload":{"lease_id":"no"},"state":"claimed","lease_id":"L1","attempt":1}}"#;
        assert_eq!(
            task_and_lease(frame),
            Some(("0193".to_owned(), "L1".to_owned()))
        );
        let other = r#"{"task":{"lease_id":"L2","id":"x"},"op":"task"}"#;
        assert_eq!(
            task_and_lease(other),
            Some(("x".to_owned(), "L2".to_owned()))
        );
        assert_eq!(task_and_lease(r#"{"op":"task","task":{"id":"x"}}"#), None);
    }
}
