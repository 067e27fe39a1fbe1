//! Fast readers' publish→deliver latency while a fraction of the clients stop reading, next
//! to the same load with every client reading. Slow clients subscribe and then read nothing
//! until the end (the gateway sends them into catch-up from history); fast clients record the
//! latency of every event. Losses and duplicates are counted for both.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_client::{HttpClient, Subscriber, WsConnection};
use agentwire_protocol::{Event, EventType, SessionKey};
use hdrhistogram::Histogram;

use crate::floor::now_micros;
use crate::stats;

#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// Subscribing clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Fraction of the clients that stop reading.
    #[arg(long, default_value_t = 0.1)]
    pub slow_fraction: f64,
    /// Events to publish, spread over the sessions.
    #[arg(long, default_value_t = 3000)]
    pub events: usize,
    /// Events per second (one sequential HTTP publisher).
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    #[arg(long, default_value_t = 10)]
    pub sessions: usize,
    /// Bytes of text per event (large events fill slow readers' buffers sooner).
    #[arg(long, default_value_t = 1024)]
    pub event_bytes: usize,
    /// Where to write result.json, summary.md and latency.png.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

struct Outcome {
    fast: Histogram<u64>,
    lost: usize,
}

async fn round(args: &Args, slow_clients: usize, tag: &str) -> anyhow::Result<Outcome> {
    let ws_url = format!("{}/v1/ws", args.gateway.replacen("http", "ws", 1));
    let run = uuid::Uuid::now_v7().simple().to_string();
    let sessions: Vec<SessionKey> = (0..args.sessions)
        .map(|i| SessionKey::parse_parts("loadtest", "slow", &format!("{tag}-{}-{i}", &run[20..])))
        .collect::<Result<_, _>>()?;
    let per_session = args.events / sessions.len();
    let histogram = Arc::new(Mutex::new(stats::histogram()?));
    let mut slow = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let session = sessions[c % sessions.len()].clone();
        if c < slow_clients {
            let mut conn = WsConnection::connect(&ws_url).await?;
            conn.subscribe(&session, None).await?;
            slow.push(conn);
            continue;
        }
        let mut sub = Subscriber::connect(&ws_url, vec![(session, None)]).await?;
        let histogram = histogram.clone();
        readers.spawn(async move {
            let mut got = 0;
            while got < per_session {
                let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await
                else {
                    break;
                };
                let sent: u128 = d
                    .event
                    .text
                    .as_deref()
                    .and_then(|t| t.split(' ').next())
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0);
                let latency = Duration::from_micros(
                    u64::try_from(now_micros().saturating_sub(sent)).unwrap_or(u64::MAX),
                );
                if let Ok(mut h) = histogram.lock() {
                    stats::record(&mut h, latency);
                }
                got += 1;
            }
            per_session - got
        });
    }
    let http = HttpClient::new(&args.gateway)?;
    let padding = "x".repeat(args.event_bytes);
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    for i in 0..per_session * sessions.len() {
        tick.tick().await;
        let mut event = Event::new(
            sessions[i % sessions.len()].clone(),
            EventType::new("agent.message")?,
        );
        event.text = Some(format!("{} {padding}", now_micros()));
        http.publish(&event).await?;
    }
    let mut lost = 0;
    while let Some(missing) = readers.join_next().await {
        lost += missing?;
    }
    drop(slow);
    let fast = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
        .clone();
    Ok(Outcome { fast, lost })
}

pub async fn run(args: Args) -> anyhow::Result<crate::report::Report> {
    let slow_clients = ((args.clients as f64) * args.slow_fraction).round() as usize;
    println!(
        "slow-consumers: {} clients over {} sessions, {} events at {}/s, {} bytes each",
        args.clients, args.sessions, args.events, args.rate, args.event_bytes
    );
    let mut report = crate::report::Report::new("slow-consumers", serde_json::json!(args));
    let snapshot = crate::procs::Snapshot::take();
    let seconds = args.events as f64 / f64::from(args.rate.max(1));
    let all_fast = round(&args, 0, "base").await?;
    let mut base =
        crate::report::Series::new("fast readers, every client reading", all_fast.fast, seconds);
    base.lost = all_fast.lost as u64;
    let with_slow = round(&args, slow_clients, "slow").await?;
    let mut slowed = crate::report::Series::new(
        &format!("fast readers, {slow_clients} clients not reading"),
        with_slow.fast,
        seconds,
    );
    slowed.lost = with_slow.lost as u64;
    report.processes = snapshot.usage();
    // The run with slow clients first: the ratio row reads "with / without".
    report.series.push(slowed);
    report.series.push(base);
    report.finish(args.out.clone())?;
    Ok(report)
}
