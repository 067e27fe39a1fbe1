//! The raw broker floor: produce→consume latency of a bare rdkafka producer and consumer with
//! the settings agentwire's gateway (idempotent, acks=all, linger 1 ms) and relay (consumer
//! group, fetch.wait.max.ms 4) use, on a topic of its own on the same broker.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire_kafka::{
    ConsumerEvent, ConsumerSettings, EventLog, KafkaSettings, LogConsumer, LogRecord,
};
use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stats;

pub fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default()
}

/// Sends `events` records at `rate` per second to `topic` and measures each record's time
/// from before `send` to its arrival at a group consumer.
pub async fn kafka(
    settings: &KafkaSettings,
    topic: &str,
    events: usize,
    rate: u32,
) -> anyhow::Result<Histogram<u64>> {
    let log = EventLog::new(settings, topic)?;
    let (tx, mut rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let consumer_settings = ConsumerSettings::new(format!("floor-{}", uuid::Uuid::now_v7()), topic);
    let (consumer, _offsets) = LogConsumer::start(settings, &consumer_settings, tx, stop.clone())?;

    // Wait for the assignment, so the first records are not measured against a group join.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("the floor consumer was not assigned its partition within 30 s")?
        {
            Some(ConsumerEvent::Assigned(_)) => break,
            Some(_) => {}
            None => anyhow::bail!("the floor consumer stopped"),
        }
    }
    // One warm-up record, so the measured ones do not include the consumer's first fetches.
    let warm_up = LogRecord {
        content_type: agentwire_kafka::CLOUDEVENTS_JSON,
        key: "floor:warm-up".into(),
        value: now_micros().to_string(),
        traceparent: None,
        tracestate: None,
    };
    log.append(&warm_up).await?;
    loop {
        let received = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
        match received.context("the warm-up record did not arrive within 30 s")? {
            Some(ConsumerEvent::Batch(_)) => break,
            Some(_) => {}
            None => anyhow::bail!("the floor consumer stopped"),
        }
    }
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        let mut pending = Vec::with_capacity(events);
        for i in 0..events {
            tick.tick().await;
            let record = LogRecord {
                content_type: agentwire_kafka::CLOUDEVENTS_JSON,
                key: format!("floor:{}", i % 20),
                value: now_micros().to_string(),
                traceparent: None,
                tracestate: None,
            };
            pending.push(log.enqueue(&record).await?);
        }
        futures::future::try_join_all(pending).await?;
        anyhow::Ok(())
    });

    let mut histogram = stats::histogram()?;
    while (histogram.len() as usize) < events {
        let received = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
        let Some(event) = received
            .with_context(|| format!("no record for 30 s after {} of {events}", histogram.len()))?
        else {
            anyhow::bail!("the floor consumer stopped");
        };
        if let ConsumerEvent::Batch(batch) = event {
            let now = now_micros();
            for message in batch {
                let sent: u128 =
                    std::str::from_utf8(message.value.as_deref().unwrap_or_default())?.parse()?;
                stats::record(
                    &mut histogram,
                    Duration::from_micros(u64::try_from(now.saturating_sub(sent))?),
                );
            }
        }
    }
    producer.await??;
    stop.cancel();
    drop(rx);
    tokio::task::spawn_blocking(move || consumer.join()).await?;
    Ok(histogram)
}

/// The raw Valkey pub/sub floor: PUBLISH of a timestamp at `rate` on one channel with `fan`
/// subscriber connections (redis crate), each recording publish→receive latency.
pub async fn valkey(
    url: &str,
    events: usize,
    rate: u32,
    fan: usize,
) -> anyhow::Result<Histogram<u64>> {
    use futures::StreamExt as _;
    let client = redis::Client::open(url)?;
    let channel = format!("floor:{}", uuid::Uuid::now_v7().simple());
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..fan.max(1) {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        readers.spawn(async move {
            let mut h = stats::histogram()?;
            let mut messages = pubsub.on_message();
            while (h.len() as usize) < events {
                let Ok(Some(message)) =
                    tokio::time::timeout(Duration::from_secs(10), messages.next()).await
                else {
                    break;
                };
                let sent: u128 = message.get_payload::<String>()?.parse()?;
                stats::record(
                    &mut h,
                    Duration::from_micros(u64::try_from(now_micros().saturating_sub(sent))?),
                );
            }
            anyhow::Ok(h)
        });
    }
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    for _ in 0..events {
        tick.tick().await;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(now_micros().to_string())
            .query_async(&mut conn)
            .await?;
    }
    let mut all = stats::histogram()?;
    while let Some(h) = readers.join_next().await {
        all.add(&h??)?;
    }
    Ok(all)
}

/// The raw WebSocket floor: a tokio-tungstenite echo server and client on loopback; each
/// message's round trip at `rate`.
pub async fn ws_echo(events: usize, rate: u32) -> anyhow::Result<Histogram<u64>> {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        let mut ws = tokio_tungstenite::accept_async(socket).await?;
        while let Some(message) = ws.next().await {
            match message? {
                Message::Text(text) => ws.send(Message::Text(text)).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok(())
    });
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/"), None, true).await?;
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        let mut h = stats::histogram()?;
        while (h.len() as usize) < events {
            let Some(message) = stream.next().await else {
                break;
            };
            if let Message::Text(text) = message? {
                let sent: u128 = text.parse()?;
                stats::record(
                    &mut h,
                    Duration::from_micros(u64::try_from(now_micros().saturating_sub(sent))?),
                );
            }
        }
        anyhow::Ok(h)
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    for _ in 0..events {
        tick.tick().await;
        sink.send(Message::text(now_micros().to_string())).await?;
    }
    let h = reader.await??;
    sink.close().await?;
    server.abort();
    Ok(h)
}
