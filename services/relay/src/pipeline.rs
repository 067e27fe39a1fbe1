//! The relay pipeline, wired downstream first: Valkey store, then the Kafka poll loop that
//! feeds it through a bounded channel.

use std::time::{Duration, Instant};

use agentwire_kafka::{ConsumerEvent, LogConsumer, LogMessage, OffsetStore};
use agentwire_protocol::{Offset, cloudevents};
use agentwire_valkey::{Append, HistoryStore};
use backon::{ExponentialBuilder, Retryable as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::{RelayError, metrics as m};

/// Batches buffered between the poll thread and the Valkey writer.
const CHANNEL_BATCHES: usize = 4;

/// Runs the relay until `shutdown` is cancelled, then finishes the batches already read,
/// commits their offsets and returns.
pub async fn run(config: RelayConfig, shutdown: CancellationToken) -> Result<(), RelayError> {
    config.validate().map_err(RelayError::Config)?;
    // Install the recorder before the first metric is recorded, not at the first scrape.
    agentwire_runtime::metrics::handle();
    let store = HistoryStore::connect(&config.valkey.url, config.valkey.history()).await?;
    let (tx, mut rx) = mpsc::channel(CHANNEL_BATCHES);
    let poll_stop = CancellationToken::new();
    let (consumer, offsets) = LogConsumer::start(
        &config.kafka.settings(),
        &config.consumer(),
        tx,
        poll_stop.clone(),
    )?;
    tracing::info!(topic = %config.kafka.topic, group = %config.group, "relay started");
    let carrier = tokio::spawn(crate::enriched::run(
        config.clone(),
        store.clone(),
        shutdown.clone(),
    ));

    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            () = shutdown.cancelled() => break,
        };
        match event {
            Some(ConsumerEvent::Batch(batch)) => {
                write_batch(&store, &offsets, &batch, &shutdown).await
            }
            Some(ConsumerEvent::Assigned(p)) => {
                tracing::info!(partitions = ?p, "partitions assigned")
            }
            Some(ConsumerEvent::Revoked(p)) => {
                tracing::info!(partitions = ?p, "partitions revoked")
            }
            None => break,
        }
    }

    // Stop polling, finish what was already read, then commit it.
    poll_stop.cancel();
    rx.close();
    while let Some(event) = rx.recv().await {
        if let ConsumerEvent::Batch(batch) = event {
            write_batch(&store, &offsets, &batch, &CancellationToken::new()).await;
        }
    }
    // The poll thread ends within one poll interval; join it off the async runtime.
    let _ = tokio::task::spawn_blocking(move || consumer.join()).await;
    if let Err(err) = offsets.commit_sync() {
        tracing::warn!(error = %err, "final offset commit failed; the next relay re-reads a little");
    }
    match carrier.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "the enrichment carrier failed"),
        Err(err) => tracing::warn!(error = %err, "the enrichment carrier panicked"),
    }
    tracing::info!("relay stopped");
    Ok(())
}

/// Writes one batch to Valkey, retrying until it succeeds or `stop` is cancelled, then
/// stores the highest offset of each partition in it.
async fn write_batch(
    store: &HistoryStore,
    offsets: &OffsetStore,
    batch: &[LogMessage],
    stop: &CancellationToken,
) {
    let parsed: Vec<_> = batch.iter().filter_map(parse).collect();
    let appends: Vec<Append<'_>> = parsed
        .iter()
        .map(|(event, offset, json)| Append {
            session: &event.session,
            offset: *offset,
            event_json: json,
        })
        .collect();
    let started = Instant::now();
    let attempt = || async { store.append_batch(&appends).await };
    let written = attempt
        .retry(ExponentialBuilder::default().with_max_delay(Duration::from_secs(2)).without_max_times().with_jitter())
        .notify(|err, after| {
            metrics::counter!(m::VALKEY_ERRORS).increment(1);
            tracing::warn!(error = %err, retry_in = ?after, "valkey write failed; retrying the batch");
        })
        .when(|_| !stop.is_cancelled())
        .await;
    let Ok(written) = written else {
        // Stopping: these offsets stay unstored and are read again by the next relay.
        return;
    };
    metrics::histogram!(m::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(m::BATCH_SIZE).record(appends.len() as f64);
    metrics::counter!(m::EVENTS_WRITTEN).increment(written as u64);
    metrics::counter!(m::EVENTS_REPLAYED).increment((appends.len() - written) as u64);

    offsets.store_batch(batch);
}

/// Decodes a record into its event and stored JSON; records that are not agentwire events
/// are counted and skipped (their offsets are still stored: they can never become valid).
fn parse(message: &LogMessage) -> Option<(agentwire_protocol::Event, Offset, String)> {
    let skip = |reason: &'static str| {
        metrics::counter!(m::RECORDS_SKIPPED, "reason" => reason).increment(1);
        tracing::warn!(partition = message.partition, offset = %message.offset, reason, "skipping a record");
        None
    };
    let Some(value) = &message.value else {
        return skip("empty");
    };
    let Ok(json) = std::str::from_utf8(value) else {
        return skip("not_utf8");
    };
    let Ok(event) = cloudevents::from_json(json) else {
        return skip("not_an_event");
    };
    if message.key.as_deref() != Some(event.session.to_string().as_bytes()) {
        return skip("key_mismatch");
    }
    Some((event, message.offset, json.to_owned()))
}
