//! `fanout` and `ephemeral`: S sessions, N WebSocket subscribers (spread evenly over the
//! sessions), P WebSocket publishers at a total target rate. Latency is from the send stamp
//! carried in each event's `text` to its delivery; durable deliveries are checked per
//! subscriber against the acknowledged offsets of its session (losses, duplicates).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentwire_kafka::{KafkaSettings, ensure_topic, partition_count};
use agentwire_protocol::SessionKey;
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::report::{Report, Series};
use crate::wsload::{self, Class};
use crate::{floor, peer, procs, stats, ws_floor};

#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct Args {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// The broker the stack uses (for the Kafka floor).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The stack's event topic (the Kafka floor copies its partition count).
    #[arg(long, default_value = "agent.events")]
    pub topic: String,
    /// The Valkey the stack uses (for the pub/sub floor and the peer).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub valkey: String,
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    #[arg(long, default_value_t = 2000)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Events per second, in total. The default fits a 2-core machine running the whole stack
    /// with the tansu broker; at 5,000/s tansu 0.6.0 falls behind and crashes (see README).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Extra bytes of text per event.
    #[arg(long, default_value_t = 64)]
    pub padding: usize,
    /// Skip the floors (Kafka, Valkey pub/sub, WebSocket echo).
    #[arg(long)]
    pub no_floors: bool,
    /// Also run the same load on the Socket.IO peer (`loadtests/peers/socketio`).
    #[arg(long)]
    pub peer: bool,
    /// Seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 15.0)]
    pub drain_seconds: f64,
    /// Where to write result.json, summary.md and latency.png.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

fn sessions(run: &str, count: usize, kind: &str) -> anyhow::Result<Vec<SessionKey>> {
    (0..count)
        .map(|i| {
            SessionKey::parse_parts("loadtest", kind, &format!("{run}-{i}")).map_err(Into::into)
        })
        .collect()
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {{per_sec}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// Runs the load on agentwire and returns its series.
pub async fn agentwire(args: &Args, class: Class) -> anyhow::Result<Series> {
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let kind = match class {
        Class::Durable => "fanout",
        Class::Ephemeral => "ephemeral",
    };
    let sessions = sessions(&run, args.sessions.max(1), kind)?;
    let ws_url = format!("{}/v1/ws", args.gateway.replacen("http", "ws", 1));
    let connecting = bar(args.subscribers as u64, "subscribing");
    let mut streams = Vec::with_capacity(args.subscribers);
    // Connect in waves so the gateway's accept queue is never flooded.
    for chunk in (0..args.subscribers).collect::<Vec<_>>().chunks(100) {
        let wave =
            futures::future::try_join_all(
                chunk.iter().map(|i| {
                    let session = sessions[i % sessions.len()].clone();
                    let url = ws_url.clone();
                    async move {
                        anyhow::Ok((session.clone(), wsload::subscribe(&url, &session).await?))
                    }
                }),
            )
            .await?;
        connecting.inc(wave.len() as u64);
        streams.extend(wave);
    }
    connecting.finish();

    let total = Arc::new(AtomicU64::new(0));
    let latencies = stats::Latencies::new();
    let stop = CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for (session, ws) in streams {
        let reader = wsload::read(ws, session, total.clone(), latencies.clone(), stop.clone());
        readers.spawn(reader);
    }

    let events = (f64::from(args.rate) * args.seconds).round() as usize;
    let (shares, interval) = wsload::shares(&sessions, events, args.publishers, args.rate);
    let padding: Arc<str> = "x".repeat(args.padding).into();
    let progress = Arc::new(AtomicU64::new(0));
    let publishing = bar(events as u64, "publishing");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (count, mine) in shares {
        let (url, padding, progress) = (ws_url.clone(), padding.clone(), progress.clone());
        tasks.spawn(async move {
            wsload::publish(&url, mine, class, count, interval, padding, progress).await
        });
    }
    let mut published = Vec::new();
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(result) => published.push(result??),
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                publishing.set_position(progress.load(Ordering::Relaxed));
            }
        }
    }
    publishing.finish();
    let publish_seconds = started.elapsed().as_secs_f64();

    // Expected deliveries: each acked durable event to each subscriber of its session; each
    // ephemeral one likewise (those that do not arrive were shed).
    let subs_per_session: BTreeMap<&SessionKey, u64> = (0..args.subscribers)
        .map(|i| &sessions[i % sessions.len()])
        .fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s).or_default() += 1;
            m
        });
    let mut acked: BTreeMap<SessionKey, BTreeSet<u64>> = BTreeMap::new();
    for p in &published {
        for (session, offset) in &p.acked {
            acked.entry(session.clone()).or_default().insert(*offset);
        }
    }
    let expected: u64 = match class {
        Class::Durable => acked
            .iter()
            .map(|(s, o)| o.len() as u64 * subs_per_session.get(s).copied().unwrap_or(0))
            .sum(),
        Class::Ephemeral => {
            let sent: u64 = published.iter().map(|p| p.sent_ephemeral).sum();
            sent * args.subscribers as u64 / sessions.len() as u64
        }
    };
    crate::wsload::drained(
        &total,
        expected,
        Duration::from_secs_f64(args.drain_seconds),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let (mut lost, mut duplicated, mut delivered) = (0u64, 0u64, 0u64);
    while let Some(seen) = readers.join_next().await {
        let seen = seen??;
        delivered += seen.offsets.len() as u64 + seen.ephemeral;
        if class == Class::Durable {
            let want = acked.get(&seen.session).cloned().unwrap_or_default();
            let got: BTreeSet<u64> = seen.offsets.iter().copied().collect();
            duplicated += (seen.offsets.len() - got.len()) as u64;
            lost += want.difference(&got).count() as u64;
        }
    }
    let refused: Vec<&String> = published.iter().flat_map(|p| &p.refused).collect();
    if !refused.is_empty() {
        println!(
            "{} publishes refused, e.g. {:?}",
            refused.len(),
            refused.first()
        );
    }
    let mut series = Series::new("agentwire", latencies.merged()?, seconds);
    series.publishes_per_sec = published
        .iter()
        .map(|p| p.acked.len() as u64 + p.sent_ephemeral)
        .sum::<u64>() as f64
        / publish_seconds;
    series.deliveries_per_sec = delivered as f64 / seconds;
    series.lost = lost;
    series.duplicated = duplicated;
    if class == Class::Ephemeral {
        series.shed = expected.saturating_sub(delivered);
    }
    Ok(series)
}

/// The size of the ephemeral frame agentwire delivers for one load event (as the gateway
/// stamps it: id, time and source added).
fn frame_bytes(args: &Args) -> anyhow::Result<usize> {
    let session = SessionKey::parse_parts("loadtest", "ephemeral", "0123456789ab-0")?;
    let mut event = agentwire_protocol::Event::new(
        session.clone(),
        agentwire_protocol::EventType::new("agent.load")?,
    );
    event.text = Some(format!(
        "{} {}",
        floor::now_micros(),
        "x".repeat(args.padding)
    ));
    event.stamp(std::time::SystemTime::now());
    let json = agentwire_protocol::cloudevents::to_json(&event);
    Ok(agentwire_protocol::frames::ephemeral_frame_json(&session, &json).len())
}

/// The whole scenario: agentwire, then the floors and the peer, then the report.
pub async fn run(args: Args, class: Class) -> anyhow::Result<Report> {
    let scenario = match class {
        Class::Durable => "fanout",
        Class::Ephemeral => "ephemeral",
    };
    println!(
        "{scenario}: {} sessions, {} subscribers, {} publishers, {} events/s for {} s",
        args.sessions, args.subscribers, args.publishers, args.rate, args.seconds
    );
    let mut report = Report::new(scenario, json!(args));
    let snapshot = procs::Snapshot::take();
    let ours = agentwire(&args, class).await?;
    report.processes = snapshot.usage();
    report.series.push(ours);
    if args.peer {
        let peer = peer::fanout(&args).await.context("the Socket.IO peer")?;
        report.series.push(peer);
    }
    if !args.no_floors {
        let events = ((f64::from(args.rate) * args.seconds) as usize).min(20_000);
        let fan = (args.subscribers / args.sessions.max(1)).clamp(1, 50);
        if class == Class::Durable {
            let settings = KafkaSettings::new(&args.brokers);
            let partitions = partition_count(&settings, &args.topic).await?.max(1);
            let topic = format!("floor-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
            ensure_topic(&settings, &topic, i32::try_from(partitions)?).await?;
            let h = floor::kafka(&settings, &topic, events, args.rate).await?;
            report
                .series
                .push(Series::new("kafka produce→consume", h, args.seconds));
        }
        let h = floor::valkey(&args.valkey, events, args.rate, fan).await?;
        report
            .series
            .push(Series::new("valkey publish→subscriber", h, args.seconds));
        let h = floor::ws_echo(events, args.rate).await?;
        report
            .series
            .push(Series::new("websocket echo (round trip)", h, args.seconds));
        // The same load through the smallest Valkey → WebSocket fanout server, with frames
        // as large as agentwire's (the kernel's share grows with the bytes).
        let floor = ws_floor::measure(
            &args.valkey,
            args.sessions,
            args.subscribers,
            args.publishers,
            args.rate,
            args.seconds,
            frame_bytes(&args)?,
        )
        .await
        .context("the websocket fanout floor")?;
        if let Some(cpu_seconds) = floor.server_cpu_seconds {
            report.processes.push(procs::Usage {
                name: "ws fanout floor server (its own run)".into(),
                pid: 0,
                cpu_seconds,
                peak_rss_mib: 0.0,
            });
        }
        report.series.push(floor.series);
    }
    report.finish(args.out.clone())?;
    Ok(report)
}
