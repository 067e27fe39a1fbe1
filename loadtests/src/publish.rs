//! `publish`: durable publish throughput and publish→ack latency, over HTTP (concurrent
//! clients, each waiting for its ack) and over WebSocket (pipelined publishers at a target
//! rate, acks read concurrently).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use agentwire_client::HttpClient;
use agentwire_protocol::{Event, EventType, SessionKey};
use serde_json::json;

use crate::report::{Report, Series};
use crate::wsload::{self, Class};
use crate::{procs, stats};

#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    #[arg(long, default_value_t = 50)]
    pub sessions: usize,
    /// Concurrent HTTP clients (each one publish at a time).
    #[arg(long, default_value_t = 32)]
    pub http_clients: usize,
    /// WebSocket publishers.
    #[arg(long, default_value_t = 16)]
    pub ws_publishers: usize,
    /// WebSocket publishes per second, in total (what tansu sustains on 2 cores; see README).
    #[arg(long, default_value_t = 600)]
    pub ws_rate: u32,
    /// Seconds per transport.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 64)]
    pub padding: usize,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    println!(
        "publish: {} HTTP clients, then {} WebSocket publishers at {}/s, {} s each",
        args.http_clients, args.ws_publishers, args.ws_rate, args.seconds
    );
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let sessions: Vec<SessionKey> = (0..args.sessions.max(1))
        .map(|i| SessionKey::parse_parts("loadtest", "publish", &format!("{run}-{i}")))
        .collect::<Result<_, _>>()?;
    let mut report = Report::new("publish", json!(args));
    let snapshot = procs::Snapshot::take();

    let http = HttpClient::new(&args.gateway)?;
    let padding = "x".repeat(args.padding);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..args.http_clients.max(1) {
        let (http, sessions, padding) = (http.clone(), sessions.clone(), padding.clone());
        clients.spawn(async move {
            let mut h = stats::histogram()?;
            let mut i = c;
            while Instant::now() < deadline {
                let mut event = Event::new(
                    sessions[i % sessions.len()].clone(),
                    EventType::new("agent.load")?,
                );
                event.text = Some(padding.clone());
                let sent = Instant::now();
                http.publish(&event).await?;
                stats::record(&mut h, sent.elapsed());
                i += args.http_clients;
            }
            anyhow::Ok(h)
        });
    }
    let mut http_latency = stats::histogram()?;
    while let Some(h) = clients.join_next().await {
        http_latency.add(&h??)?;
    }
    let http_seconds = started.elapsed().as_secs_f64();
    let count = http_latency.len();
    let mut series = Series::new("http publish→ack", http_latency, http_seconds);
    series.publishes_per_sec = count as f64 / http_seconds;
    series.deliveries_per_sec = 0.0;
    report.series.push(series);

    let ws_url = format!("{}/v1/ws", args.gateway.replacen("http", "ws", 1));
    let events = (f64::from(args.ws_rate) * args.seconds).round() as usize;
    let (shares, interval) = wsload::shares(&sessions, events, args.ws_publishers, args.ws_rate);
    let padding: Arc<str> = padding.into();
    let progress = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (count, mine) in shares {
        let (url, padding, progress) = (ws_url.clone(), padding.clone(), progress.clone());
        tasks.spawn(async move {
            wsload::publish(
                &url,
                mine,
                Class::Durable,
                count,
                interval,
                padding,
                progress,
            )
            .await
        });
    }
    let mut ws_latency = stats::histogram()?;
    let (mut acked, mut refused) = (0usize, 0usize);
    while let Some(done) = tasks.join_next().await {
        let published = done??;
        acked += published.acked.len();
        refused += published.refused.len();
        if let Some(h) = published.ack_latency {
            ws_latency.add(&h)?;
        }
    }
    let ws_seconds = started.elapsed().as_secs_f64();
    let mut series = Series::new("websocket publish→ack", ws_latency, ws_seconds);
    series.publishes_per_sec = acked as f64 / ws_seconds;
    series.deliveries_per_sec = 0.0;
    report.series.push(series);
    report
        .figures
        .insert("websocket publishes refused".into(), json!(refused));
    report.processes = snapshot.usage();
    report.finish(args.out.clone())?;
    Ok(report)
}
