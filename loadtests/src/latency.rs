//! Publish→deliver latency through the whole stack, next to the raw Kafka floor.
//!
//! Publishers POST events (paced to `--rate` in total) whose `text` carries the send time in
//! microseconds since the epoch; one WebSocket subscriber per session records the time from
//! just before the POST to the delivery of the event frame. Also counts losses and duplicates
//! against the offsets the publishes were acknowledged with.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agentwire_client::{HttpClient, Subscriber};
use agentwire_kafka::{KafkaSettings, ensure_topic, partition_count};
use agentwire_protocol::{Event, EventType, Offset, SessionKey};
use anyhow::Context as _;

use crate::floor::{self, now_micros};
use crate::stats;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The broker the stack uses (for the floor).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The stack's event topic (the floor copies its partition count).
    #[arg(long, default_value = "agent.events")]
    topic: String,
    /// Events to publish (and to send through the floor).
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Events per second, in total.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Sessions the events are spread over.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Concurrent HTTP publishers.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let sessions: Vec<SessionKey> = (0..args.sessions)
        .map(|i| SessionKey::parse_parts("loadtest", "latency", &format!("{}-{i}", &run[20..])))
        .collect::<Result<_, _>>()?;
    let ws_url = format!("{}/v1/ws", args.gateway.replacen("http", "ws", 1));
    let mut subscriber = Subscriber::connect(
        &ws_url,
        sessions.iter().map(|s| (s.clone(), None)).collect(),
    )
    .await
    .with_context(|| format!("subscribe at {ws_url}"))?;

    println!(
        "latency: {} events at {}/s over {} sessions through {}",
        args.events, args.rate, args.sessions, args.gateway
    );
    let http = HttpClient::new(&args.gateway)?;
    let per_publisher = args.events.div_ceil(args.publishers);
    let interval = Duration::from_secs_f64(args.publishers as f64 / f64::from(args.rate.max(1)));
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..args.publishers {
        let (http, sessions) = (http.clone(), sessions.clone());
        let count = per_publisher.min(args.events.saturating_sub(p * per_publisher));
        publishers.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut acks = Vec::with_capacity(count);
            for i in 0..count {
                tick.tick().await;
                let session = sessions[(p + i * args.publishers) % sessions.len()].clone();
                let mut event = Event::new(session.clone(), EventType::new("agent.message")?);
                event.text = Some(now_micros().to_string());
                acks.push((session, http.publish(&event).await?.offset));
            }
            anyhow::Ok(acks)
        });
    }

    let mut histogram = stats::histogram()?;
    // From the gateway's receive stamp (the event's `time`) to delivery: the server-side part.
    let mut server_side = stats::histogram()?;
    let mut seen: BTreeMap<SessionKey, Vec<Offset>> = BTreeMap::new();
    let mut duplicates = 0_usize;
    while (histogram.len() as usize) < args.events {
        let delivery = match tokio::time::timeout(Duration::from_secs(30), subscriber.next()).await
        {
            Ok(d) => d?,
            Err(_) => break,
        };
        let now = now_micros();
        let sent: u128 = delivery.event.text.as_deref().unwrap_or_default().parse()?;
        stats::record(
            &mut histogram,
            Duration::from_micros(u64::try_from(now.saturating_sub(sent))?),
        );
        if let Some(stamped) = delivery.event.time.as_ref().map(stamp_micros) {
            stats::record(
                &mut server_side,
                Duration::from_micros(u64::try_from(now.saturating_sub(stamped))?),
            );
        }
        let offsets = seen.entry(delivery.session).or_default();
        if offsets.last().is_some_and(|last| *last >= delivery.offset) {
            duplicates += 1;
        }
        offsets.push(delivery.offset);
    }
    let mut acked: BTreeMap<SessionKey, BTreeSet<Offset>> = BTreeMap::new();
    while let Some(result) = publishers.join_next().await {
        for (session, offset) in result?? {
            acked.entry(session).or_default().insert(offset);
        }
    }
    let lost: usize = acked
        .iter()
        .map(|(s, offsets)| {
            let got: BTreeSet<Offset> = seen
                .get(s)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            offsets.difference(&got).count()
        })
        .sum();
    println!("agentwire publish→deliver: {}", stats::summary(&histogram));
    println!(
        "  of which gateway receive→deliver: {}",
        stats::summary(&server_side)
    );
    println!(
        "agentwire losses={lost} duplicates={duplicates} (server duplicates dropped by the client: {})",
        subscriber.dropped()
    );

    let settings = KafkaSettings::new(&args.brokers);
    // The floor's topic has as many partitions as the stack's, so fetches cost the same.
    let partitions = partition_count(&settings, &args.topic).await?.max(1);
    let topic = format!("latency-floor-{}", &run[20..]);
    ensure_topic(&settings, &topic, i32::try_from(partitions)?)
        .await
        .with_context(|| format!("create {topic}"))?;
    println!(
        "floor: topic {topic} with {partitions} partitions on {}",
        args.brokers
    );
    let floor = floor::kafka(&settings, &topic, args.events, args.rate).await?;
    println!("raw kafka produce→consume: {}", stats::summary(&floor));
    let p = |h: &hdrhistogram::Histogram<u64>, q| h.value_at_quantile(q) as f64;
    println!(
        "ratio agentwire/floor: p50 {:.2}x  p99 {:.2}x",
        p(&histogram, 0.5) / p(&floor, 0.5).max(1.0),
        p(&histogram, 0.99) / p(&floor, 0.99).max(1.0)
    );
    Ok(())
}

/// Microseconds since the epoch of a protobuf timestamp.
fn stamp_micros(t: &prost_types::Timestamp) -> u128 {
    let seconds = u128::try_from(t.seconds).unwrap_or(0);
    let micros = u128::try_from(t.nanos / 1000).unwrap_or(0);
    seconds * 1_000_000 + micros
}
