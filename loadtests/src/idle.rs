//! Memory of idle connections: opens N WebSocket connections to the gateway (each following
//! one session), then reports the gateway's resident memory before and after, per connection.
//! The gateway's pid is given, so the figure is the server's own RSS, read from /proc.

use std::time::Duration;

use agentwire_client::WsConnection;
use agentwire_protocol::SessionKey;
use anyhow::Context as _;
use futures::StreamExt as _;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The gateway process, whose RSS is read from /proc/PID/status.
    #[arg(long)]
    pid: u32,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Distinct sessions the connections follow.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// The RSS once two readings 250 ms apart agree within 1% (at most 20 readings).
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    let mut last = rss_kib(pid)?;
    for _ in 0..20 {
        ticks.tick().await;
        let now = rss_kib(pid)?;
        if now.abs_diff(last) * 100 <= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let ws_url = format!("{}/v1/ws", args.gateway.replacen("http", "ws", 1));
    let before = rss_kib(args.pid)?;
    let sessions: Vec<SessionKey> = (0..args.sessions.max(1))
        .map(|i| SessionKey::parse_parts("loadtest", "idle", &format!("s{i}")))
        .collect::<Result<_, _>>()?;
    let opened: Vec<anyhow::Result<WsConnection>> = futures::stream::iter(0..args.connections)
        .map(|i| {
            let (url, session) = (ws_url.clone(), sessions[i % sessions.len()].clone());
            async move {
                let mut conn = WsConnection::connect(&url).await?;
                conn.subscribe(&session, None).await?;
                anyhow::Ok(conn)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let connections: Vec<WsConnection> = opened.into_iter().collect::<Result<_, _>>()?;
    let after = settled_rss(args.pid).await?;
    let per = (after.saturating_sub(before) as f64 * 1024.0) / connections.len().max(1) as f64;
    println!(
        "idle: {} connections over {} sessions: gateway RSS {} KiB before, {} KiB after, {:.0} bytes ({:.1} KiB) per connection",
        connections.len(),
        sessions.len(),
        before,
        after,
        per,
        per / 1024.0
    );
    drop(connections);
    Ok(())
}
