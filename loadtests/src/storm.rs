//! `reconnect-storm`: N resuming subscribers (the Rust client's `Subscriber`) follow S
//! sessions while events are published; halfway through every connection is dropped at once.
//! Reports how long until every client received again after resuming, and checks every
//! client against the acknowledged offsets of its session (no loss, no duplicate).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentwire_client::{HttpClient, Subscriber, SubscriberConfig};
use agentwire_protocol::{Event, EventType, Offset, SessionKey};
use indicatif::ProgressBar;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::floor::now_micros;
use crate::report::{Report, Series};
use crate::{procs, stats};

#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Events per second (HTTP publishers, spread over the sessions).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Seconds of publishing; the storm hits halfway.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds to wait for every client to have every event after the last publish.
    #[arg(long, default_value_t = 60.0)]
    pub drain_seconds: f64,
    /// The stack's Valkey (to count the live subscriptions of the sessions' channels).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub valkey: String,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

struct Client {
    session: SessionKey,
    offsets: Vec<Offset>,
    /// From the storm to the first delivery after it.
    resumed_after: Option<Duration>,
    reconnects: u64,
    dropped: u64,
    /// Errors `Subscriber::next` returned (refusals, protocol errors), by message.
    errors: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    println!(
        "reconnect-storm: {} clients over {} sessions, {} events/s for {} s",
        args.clients, args.sessions, args.rate, args.seconds
    );
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let sessions: Vec<SessionKey> = (0..args.sessions.max(1))
        .map(|i| SessionKey::parse_parts("loadtest", "storm", &format!("{run}-{i}")))
        .collect::<Result<_, _>>()?;
    let ws_url = format!("{}/v1/ws", args.gateway.replacen("http", "ws", 1));
    let config = SubscriberConfig {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(2),
        ..SubscriberConfig::default()
    };
    let connecting = ProgressBar::new(args.clients as u64);
    let mut subscribers = Vec::with_capacity(args.clients);
    for chunk in (0..args.clients).collect::<Vec<_>>().chunks(100) {
        let wave = futures::future::try_join_all(chunk.iter().map(|i| {
            let session = sessions[i % sessions.len()].clone();
            let (url, config) = (ws_url.clone(), config.clone());
            async move {
                let sub =
                    Subscriber::connect_with(url, vec![(session.clone(), None)], config).await?;
                anyhow::Ok((session, sub))
            }
        }))
        .await?;
        connecting.inc(wave.len() as u64);
        subscribers.extend(wave);
    }
    connecting.finish();

    let snapshot = procs::Snapshot::take();
    let (storm_tx, storm_rx) = watch::channel::<Option<Instant>>(None);
    let stop = CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    // Clients that received at least one event: the storm waits for all of them, so every
    // client resumes with a cursor and the figures are about cursor resumes. (A client with no
    // cursor yet would resubscribe from the start of the log and lose nothing either; see
    // docs/protocol.md.)
    let warmed = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(std::sync::Mutex::new(stats::histogram()?));
    let mut tasks = tokio::task::JoinSet::new();
    for (session, mut sub) in subscribers {
        let warmed = warmed.clone();
        let (mut storm, stop, received, latency) = (
            storm_rx.clone(),
            stop.clone(),
            received.clone(),
            latency.clone(),
        );
        tasks.spawn(async move {
            let mut client = Client {
                session,
                offsets: Vec::new(),
                resumed_after: None,
                reconnects: 0,
                dropped: 0,
                errors: Vec::new(),
            };
            let mut storm_at: Option<Instant> = None;
            loop {
                tokio::select! {
                    changed = storm.changed(), if storm_at.is_none() => {
                        if changed.is_ok() {
                            storm_at = *storm.borrow();
                            sub.drop_connection();
                        }
                    }
                    delivery = sub.next() => {
                        let delivery = match delivery {
                            Ok(delivery) => delivery,
                            Err(err) => {
                                client.errors.push(err.to_string());
                                continue;
                            }
                        };
                        let sent: u128 = delivery.event.text.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0);
                        if let Ok(mut h) = latency.lock() {
                            stats::record(&mut h, Duration::from_micros(u64::try_from(now_micros().saturating_sub(sent)).unwrap_or(u64::MAX)));
                        }
                        if client.offsets.is_empty() {
                            warmed.fetch_add(1, Ordering::Relaxed);
                        }
                        client.offsets.push(delivery.offset);
                        received.fetch_add(1, Ordering::Relaxed);
                        if let (Some(at), None) = (storm_at, client.resumed_after) {
                            client.resumed_after = Some(at.elapsed());
                        }
                    }
                    () = stop.cancelled() => break,
                }
            }
            client.reconnects = sub.reconnects();
            client.dropped = sub.dropped();
            client
        });
    }

    let http = HttpClient::new(&args.gateway)?;
    let events = (f64::from(args.rate) * args.seconds).round() as usize;
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut stormed_at: Option<usize> = None;
    for i in 0..events {
        tick.tick().await;
        let all_warm = warmed.load(Ordering::Relaxed) == args.clients as u64;
        if stormed_at.is_none() && i >= events / 2 && all_warm {
            println!(
                "storm: dropping all {} connections at event {i}",
                args.clients
            );
            storm_tx.send_replace(Some(Instant::now()));
            stormed_at = Some(i);
        }
        let session = sessions[i % sessions.len()].clone();
        let http = http.clone();
        pending.spawn(async move {
            let mut event = Event::new(session.clone(), EventType::new("agent.load")?);
            event.text = Some(now_micros().to_string());
            anyhow::Ok((session, http.publish(&event).await?.offset))
        });
    }
    let mut acked: BTreeMap<SessionKey, BTreeSet<Offset>> = BTreeMap::new();
    while let Some(done) = pending.join_next().await {
        let (session, offset) = done??;
        acked.entry(session).or_default().insert(offset);
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    let per_session: BTreeMap<&SessionKey, u64> = (0..args.clients)
        .map(|i| &sessions[i % sessions.len()])
        .fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s).or_default() += 1;
            m
        });
    let expected: u64 = acked
        .iter()
        .map(|(s, o)| o.len() as u64 * per_session.get(s).copied().unwrap_or(0))
        .sum();
    crate::wsload::drained(
        &received,
        expected,
        Duration::from_secs_f64(args.drain_seconds),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    // While every client is still connected: how many gateway feeds subscribe each session's
    // channel (1 per gateway following it; 0 means live events cannot reach its clients).
    let channel_subscribers = channel_subscribers(&args.valkey, &sessions).await;
    stop.cancel();
    let (mut lost, mut duplicated, mut reconnects, mut dropped) = (0u64, 0u64, 0u64, 0u64);
    let mut resumed = stats::histogram()?;
    let mut never_resumed = 0u64;
    let mut errors: Vec<String> = Vec::new();
    while let Some(client) = tasks.join_next().await {
        let client = client?;
        let got: BTreeSet<Offset> = client.offsets.iter().copied().collect();
        duplicated += (client.offsets.len() - got.len()) as u64;
        lost += acked
            .get(&client.session)
            .map_or(0, |want| want.difference(&got).count() as u64);
        reconnects += client.reconnects;
        errors.extend(client.errors);
        dropped += client.dropped;
        match client.resumed_after {
            Some(d) => stats::record(&mut resumed, d),
            None => never_resumed += 1,
        }
    }
    let histogram = latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?
        .clone();
    let mut report = Report::new("reconnect-storm", json!(args));
    let mut series = Series::new("agentwire", histogram, seconds);
    series.publishes_per_sec = events as f64 / publish_seconds;
    series.lost = lost;
    series.duplicated = duplicated;
    report.series.push(series);
    report.processes = snapshot.usage();
    let ms = |us: u64| us as f64 / 1000.0;
    report.figures.insert("clients".into(), json!(args.clients));
    report
        .figures
        .insert("storm at event".into(), json!(stormed_at));
    report.figures.insert(
        "channel subscribers per session at the end".into(),
        json!(channel_subscribers),
    );
    report.figures.insert(
        "sessions".into(),
        json!(sessions.iter().map(ToString::to_string).collect::<Vec<_>>()),
    );
    report
        .figures
        .insert("reconnects".into(), json!(reconnects));
    report.figures.insert(
        "clients that never received again".into(),
        json!(never_resumed),
    );
    report.figures.insert(
        "time to first delivery after the storm, p50 ms".into(),
        json!(ms(resumed.value_at_quantile(0.5))),
    );
    report.figures.insert(
        "time until every client received again, ms".into(),
        json!(ms(resumed.max())),
    );
    report
        .figures
        .insert("duplicates dropped by the clients".into(), json!(dropped));
    report
        .figures
        .insert("subscriber errors".into(), json!(errors.len()));
    if let Some(first) = errors.first() {
        report
            .figures
            .insert("first subscriber error".into(), json!(first));
    }
    report.finish(args.out.clone())?;
    Ok(report)
}

/// `PUBSUB NUMSUB` of each session's channel, or the error that prevented asking.
async fn channel_subscribers(url: &str, sessions: &[SessionKey]) -> serde_json::Value {
    let counts = async {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB");
        for session in sessions {
            cmd.arg(format!("aw:{{{session}}}:ch"));
        }
        let counts: Vec<(String, i64)> = cmd.query_async(&mut conn).await?;
        anyhow::Ok(counts.into_iter().map(|(_, n)| n).collect::<Vec<_>>())
    };
    match counts.await {
        Ok(counts) => json!(counts),
        Err(err) => json!(err.to_string()),
    }
}
