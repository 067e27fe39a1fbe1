//! The Socket.IO peer, driven by this tool: Socket.IO 4 with its Redis adapter on the same
//! Valkey (`loadtests/peers/socketio`, installed by its `install.sh`), two Node processes so
//! every message crosses Valkey pub/sub (publishers on one node, subscribers on the other).
//! The client speaks Engine.IO 4 / Socket.IO 5 over WebSocket itself: `0{…}` open, `40`
//! connect, `42[…]` events, `2`/`3` ping/pong. Socket.IO has no durable class: both scenarios
//! run the same way, and messages that do not arrive are reported as shed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::fanout::Args;
use crate::floor::now_micros;
use crate::report::Series;
use crate::stats;
use crate::wsload::Ws;

const PUBLISH_PORT: u16 = 3101;
const SUBSCRIBE_PORT: u16 = 3102;

fn peer_dir() -> PathBuf {
    crate::package_dir().join("peers/socketio")
}

/// The two Node processes; killed on drop.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn start(valkey: &str) -> anyhow::Result<Nodes> {
    let dir = peer_dir();
    if !dir.join("node_modules/socket.io").is_dir() {
        println!("peer: installing Socket.IO (loadtests/peers/socketio/install.sh)");
        let status = Command::new(dir.join("install.sh")).status()?;
        if !status.success() {
            bail!("loadtests/peers/socketio/install.sh failed");
        }
    }
    let mut nodes = Nodes(Vec::new());
    for port in [PUBLISH_PORT, SUBSCRIBE_PORT] {
        let child = Command::new("node")
            .arg(dir.join("server.js"))
            .env("PORT", port.to_string())
            .env("VALKEY_URL", valkey)
            .stdout(Stdio::null())
            .spawn()
            .context("start node (is Node.js installed?)")?;
        nodes.0.push(child);
    }
    for port in [PUBLISH_PORT, SUBSCRIBE_PORT] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("the Socket.IO peer did not listen on {port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(nodes)
}

/// Reads Engine.IO packets, answering pings, until one satisfies `want`.
async fn until(ws: &mut Ws, want: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .context("the peer did not answer within 20 s")?
            .context("the peer closed")??;
        if let Message::Text(text) = message {
            if text.as_str() == "2" {
                ws.send(Message::text("3")).await?;
            } else if want(text.as_str()) {
                return Ok(());
            }
        }
    }
}

async fn connect(port: u16) -> anyhow::Result<Ws> {
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = connect_async_with_config(&url, None, true)
        .await
        .with_context(|| format!("connect {url}"))?;
    until(&mut ws, |t| t.starts_with('0')).await?;
    ws.send(Message::text("40")).await?;
    until(&mut ws, |t| t.starts_with("40")).await?;
    Ok(ws)
}

async fn subscriber(room: String) -> anyhow::Result<Ws> {
    let mut ws = connect(SUBSCRIBE_PORT).await?;
    ws.send(Message::text(format!(r#"42["join","{room}"]"#)))
        .await?;
    until(&mut ws, |t| t.starts_with(r#"42["joined""#)).await?;
    Ok(ws)
}

async fn read(
    mut ws: Ws,
    total: Arc<AtomicU64>,
    latencies: stats::Latencies,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let message = tokio::select! {
            m = ws.next() => m,
            () = stop.cancelled() => break,
        };
        let Some(message) = message else { break };
        let Message::Text(text) = message? else {
            continue;
        };
        if text.as_str() == "2" {
            ws.send(Message::text("3")).await?;
            continue;
        }
        // `42["msg","<stamp> …"]`, scanned as the agentwire frames are, not parsed.
        let Some(payload) = text.as_str().strip_prefix(r#"42["msg",""#) else {
            continue;
        };
        let end = payload
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(payload.len());
        let sent: u128 = payload[..end].parse().unwrap_or(0);
        latencies.record(Duration::from_micros(
            u64::try_from(now_micros().saturating_sub(sent)).unwrap_or(u64::MAX),
        ));
        total.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn publisher(
    rooms: Vec<String>,
    count: usize,
    interval: Duration,
    padding: Arc<str>,
) -> anyhow::Result<usize> {
    let ws = connect(PUBLISH_PORT).await?;
    let (mut sink, mut stream) = ws.split();
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let pinger = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(&message, Message::Text(t) if t.as_str() == "2")
                && pong_tx.send(()).is_err()
            {
                break;
            }
        }
    });
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..count {
        tick.tick().await;
        while pong_rx.try_recv().is_ok() {
            sink.send(Message::text("3")).await?;
        }
        let room = &rooms[i % rooms.len()];
        sink.send(Message::text(format!(
            r#"42["publish","{room}","{} {padding}"]"#,
            now_micros()
        )))
        .await?;
    }
    let _ = sink.close().await;
    pinger.abort();
    Ok(count)
}

/// Runs the fanout load of `args` on the peer (the same path for both scenarios: Socket.IO
/// has one, non-durable, class).
pub async fn fanout(args: &Args) -> anyhow::Result<Series> {
    let _nodes = start(&args.valkey).await?;
    println!(
        "peer: Socket.IO on 127.0.0.1:{PUBLISH_PORT} (publishers) and :{SUBSCRIBE_PORT} (subscribers)"
    );
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let rooms: Vec<String> = (0..args.sessions.max(1))
        .map(|i| format!("{run}-{i}"))
        .collect();
    let streams = crate::wsload::in_waves(args.subscribers, |i| {
        subscriber(rooms[i % rooms.len()].clone())
    })
    .await?;
    let total = Arc::new(AtomicU64::new(0));
    let latencies = stats::Latencies::new();
    let stop = CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for ws in streams {
        readers.spawn(read(ws, total.clone(), latencies.clone(), stop.clone()));
    }
    let events = (f64::from(args.rate) * args.seconds).round() as usize;
    let (shares, interval) = crate::wsload::shares(&rooms, events, args.publishers, args.rate);
    let padding: Arc<str> = "x".repeat(args.padding).into();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (count, mine) in shares {
        tasks.spawn(publisher(mine, count, interval, padding.clone()));
    }
    let mut sent = 0;
    while let Some(done) = tasks.join_next().await {
        sent += done??;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    let expected = (sent * args.subscribers / rooms.len()) as u64;
    crate::wsload::drained(
        &total,
        expected,
        Duration::from_secs_f64(args.drain_seconds),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    while let Some(read) = readers.join_next().await {
        read??;
    }
    let latency = latencies.merged()?;
    let delivered = latency.len();
    let mut series = Series::new("socket.io (redis adapter)", latency, seconds);
    series.publishes_per_sec = sent as f64 / publish_seconds;
    series.shed = expected.saturating_sub(delivered);
    Ok(series)
}
