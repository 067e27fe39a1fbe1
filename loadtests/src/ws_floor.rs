//! The WebSocket fanout floor: the smallest server that receives a Valkey pub/sub message and
//! writes it to N WebSocket connections (tokio-tungstenite; no protocol, no auth, no checks,
//! no cursor). It runs as a process of its own (`agentwire-loadtests ws-floor-server`), so its
//! CPU is its own, and the load goes through it exactly as through agentwire's ephemeral path:
//! publishers `PUBLISH` a stamped payload on a session's channel and every connection that
//! follows the session receives it. "Added latency" is agentwire's against this.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::floor::now_micros;
use crate::procs;
use crate::report::Series;
use crate::stats;

/// The channel of session `i` of the floor.
fn channel(run: &str, i: usize) -> String {
    format!("awfloor:{run}:{i}")
}

/// The server's arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub valkey: String,
    /// Names this run's channels.
    #[arg(long)]
    pub run: String,
    #[arg(long, default_value_t = 20)]
    pub sessions: usize,
}

/// Serves until killed: subscribes to every session channel, then prints `listening <port>`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let port = start(args, CancellationToken::new()).await?;
    println!("listening {port}");
    std::future::pending().await
}

/// Subscribes to every session channel and starts accepting WebSocket connections (until
/// `stop`); returns the port.
async fn start(args: ServeArgs, stop: CancellationToken) -> anyhow::Result<u16> {
    let senders: Arc<Vec<broadcast::Sender<Utf8Bytes>>> = Arc::new(
        (0..args.sessions.max(1))
            .map(|_| broadcast::channel(1024).0)
            .collect(),
    );
    let client = redis::Client::open(args.valkey.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    for i in 0..senders.len() {
        pubsub.subscribe(channel(&args.run, i)).await?;
    }
    let feed = senders.clone();
    let feed_stop = stop.clone();
    tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                m = messages.next() => m,
                () = feed_stop.cancelled() => None,
            };
            let Some(message) = message else { break };
            let session = message.get_channel_name().rsplit(':').next();
            let Some(sender) = session
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| feed.get(i))
            else {
                continue;
            };
            if let Ok(text) = String::from_utf8(message.get_payload_bytes().to_vec()) {
                let _ = sender.send(Utf8Bytes::from(text));
            }
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let socket = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(_) => break,
                },
                () = stop.cancelled() => break,
            };
            tokio::spawn(connection(socket, senders.clone(), stop.clone()));
        }
    });
    Ok(port)
}

/// One floor connection: the session is the path (`/<i>`); every message of the session is
/// written as it comes, everything ready flushed at once.
async fn connection(
    socket: tokio::net::TcpStream,
    senders: Arc<Vec<broadcast::Sender<Utf8Bytes>>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    socket.set_nodelay(true)?;
    let mut path = String::new();
    // tungstenite's handshake callback type, whose error is a whole HTTP response.
    #[allow(clippy::result_large_err)]
    let pick = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(socket, pick).await?;
    let i: usize = path.trim_start_matches('/').parse()?;
    let mut feed = senders.get(i).context("no such session")?.subscribe();
    loop {
        let first = tokio::select! {
            received = feed.recv() => match received {
                Ok(text) => text,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = stop.cancelled() => break,
        };
        ws.feed(Message::Text(first)).await?;
        for _ in 0..63 {
            match feed.try_recv() {
                Ok(text) => ws.feed(Message::Text(text)).await?,
                Err(_) => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

/// Where the floor server runs: a process of its own when this is the load tool's binary
/// (its CPU is then measured apart), else (the test suite's smoke runs) in this process.
enum Server {
    Process(tokio::process::Child, u32),
    InProcess(CancellationToken),
}

async fn launch(valkey: &str, run: &str, sessions: usize) -> anyhow::Result<(Server, u16)> {
    let exe = std::env::current_exe()?;
    let is_tool = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("agentwire-loadtests"));
    if !is_tool {
        let stop = CancellationToken::new();
        let args = ServeArgs {
            valkey: valkey.to_owned(),
            run: run.to_owned(),
            sessions,
        };
        let port = start(args, stop.clone()).await?;
        return Ok((Server::InProcess(stop), port));
    }
    let mut child = tokio::process::Command::new(exe)
        .args(["ws-floor-server", "--valkey", valkey, "--run", run])
        .args(["--sessions", &sessions.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the floor server")?;
    let pid = child.id().context("the floor server's pid")?;
    let stdout = child.stdout.take().context("the floor server's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("the floor server did not start within 10 s")??
        .context("the floor server exited")?;
    let port: u16 = line.trim_start_matches("listening ").parse()?;
    Ok((Server::Process(child, pid), port))
}

impl Server {
    fn cpu_seconds(&self) -> Option<f64> {
        match self {
            Server::Process(_, pid) => procs::cpu_seconds_of(*pid),
            Server::InProcess(_) => None,
        }
    }

    async fn stop(self) {
        match self {
            Server::Process(mut child, _) => {
                let _ = child.kill().await;
            }
            Server::InProcess(stop) => stop.cancel(),
        }
    }
}

/// What the floor run used and delivered.
#[derive(Debug)]
pub struct Floor {
    pub series: Series,
    /// CPU seconds the floor server used during the run (`None` when it ran in this process).
    pub server_cpu_seconds: Option<f64>,
}

/// Runs the floor server, connects `subscribers` readers spread over `sessions`, publishes
/// `rate` messages/s of `frame_bytes` each for `seconds` over `publishers` Valkey connections
/// and measures each delivery from its send stamp.
pub async fn measure(
    valkey: &str,
    sessions: usize,
    subscribers: usize,
    publishers: usize,
    rate: u32,
    seconds: f64,
    frame_bytes: usize,
) -> anyhow::Result<Floor> {
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let sessions = sessions.max(1);
    let (server, port) = launch(valkey, &run, sessions).await?;
    let streams = crate::wsload::in_waves(subscribers, |i| async move {
        let url = format!("ws://127.0.0.1:{port}/{}", i % sessions);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
        anyhow::Ok(ws)
    })
    .await?;
    let total = Arc::new(AtomicU64::new(0));
    let latencies = stats::Latencies::new();
    let stop = CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for mut ws in streams {
        let (total, latencies, stop) = (total.clone(), latencies.clone(), stop.clone());
        readers.spawn(async move {
            loop {
                let message = tokio::select! {
                    m = ws.next() => m,
                    () = stop.cancelled() => break,
                };
                let Some(Ok(Message::Text(text))) = message else {
                    break;
                };
                let end = text.find(' ').unwrap_or(text.len());
                let sent: u128 = text[..end].parse().unwrap_or(0);
                latencies.record(Duration::from_micros(
                    u64::try_from(now_micros().saturating_sub(sent)).unwrap_or(u64::MAX),
                ));
                total.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let cpu_before = server.cpu_seconds();
    let client = redis::Client::open(valkey)?;
    let events = (f64::from(rate) * seconds).round() as usize;
    let channels: Vec<usize> = (0..sessions).collect();
    let (shares, interval) = crate::wsload::shares(&channels, events, publishers, rate);
    // `<16-digit stamp> <pad>`: as many bytes as the frame agentwire sends.
    let pad = "x".repeat(frame_bytes.saturating_sub(17));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (count, mine) in shares {
        let conn = client.get_multiplexed_async_connection().await?;
        let (run, pad) = (run.clone(), pad.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            // Pipelined, as agentwire's WebSocket publishers are: a publish does not wait for
            // the previous one's answer (at most 256 in flight).
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut n = 0;
            while n < count || !in_flight.is_empty() {
                tokio::select! {
                    _ = tick.tick(), if n < count && in_flight.len() < 256 => {
                        let i = mine[n % mine.len()];
                        let mut conn = conn.clone();
                        let (channel, payload) = (channel(&run, i), format!("{} {pad}", now_micros()));
                        in_flight.push(async move {
                            redis::cmd("PUBLISH")
                                .arg(channel)
                                .arg(payload)
                                .query_async::<i64>(&mut conn)
                                .await
                        });
                        n += 1;
                    }
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => { done?; }
                }
            }
            anyhow::Ok(count)
        });
    }
    let mut sent = 0;
    while let Some(done) = tasks.join_next().await {
        sent += done??;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    let expected = (sent * subscribers / sessions) as u64;
    crate::wsload::drained(&total, expected, Duration::from_secs(10)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu_seconds = server
        .cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    stop.cancel();
    while readers.join_next().await.is_some() {}
    server.stop().await;
    let latency = latencies.merged()?;
    let delivered = latency.len();
    let mut series = Series::new("websocket fanout floor", latency, elapsed);
    series.publishes_per_sec = sent as f64 / publish_seconds;
    series.shed = expected.saturating_sub(delivered);
    Ok(Floor {
        series,
        server_cpu_seconds,
    })
}
