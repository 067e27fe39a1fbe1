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
