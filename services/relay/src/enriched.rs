//! Carries `agent.enriched` into Valkey: each enrichment becomes an `enriched` annotation on
//! its session's channel (after the event it annotates, once per source offset and enrichment
//! version: a redrive by the same model and labels announces nothing again, one by a new
//! version announces again) and on the tenant's label feeds. Valkey stays a view of the log: the annotation is derived from the
//! durable record, never produced by the enricher straight into Valkey.

use std::time::{Duration, Instant};

use agentwire_kafka::{ConsumerEvent, LogConsumer, LogMessage, OffsetStore};
use agentwire_protocol::Enrichment;
use agentwire_valkey::{Annotated, Annotation, HistoryStore, keys};
use backon::{ExponentialBuilder, Retryable as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tracing::Instrument as _;

use crate::config::RelayConfig;
use crate::trace;
use crate::{RelayError, metrics as m};

/// How long an annotation waits for its event to be announced before it is sent anyway
/// (the event's window was lost, e.g. Valkey restarted empty, or its relay is far behind).
const EVENT_WAIT: Duration = Duration::from_secs(5);
const EVENT_POLL: Duration = Duration::from_millis(20);

/// Runs the enrichment carrier until `shutdown` is cancelled.
pub async fn run(
    config: RelayConfig,
    store: HistoryStore,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let kafka = config.kafka.settings();
    agentwire_kafka::ensure_topic_like(&kafka, &config.kafka.topic, &config.enriched_topic).await?;
    let (tx, mut rx) = mpsc::channel(4);
    let poll_stop = CancellationToken::new();
    let (consumer, offsets) =
        LogConsumer::start(&kafka, &config.enriched_consumer(), tx, poll_stop.clone())?;
    tracing::info!(topic = %config.enriched_topic, group = %config.enriched_group, "enrichment carrier started");
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            () = shutdown.cancelled() => break,
        };
        match event {
            Some(ConsumerEvent::Batch(batch)) => {
                let source = (
                    config.enriched_topic.as_str(),
                    config.enriched_group.as_str(),
                );
                carry(&store, &offsets, source, &batch, &shutdown).await
            }
            Some(_) => {}
            None => break,
        }
    }
    poll_stop.cancel();
    let _ = tokio::task::spawn_blocking(move || consumer.join()).await;
    if let Err(err) = offsets.commit_sync() {
        tracing::warn!(error = %err, "final enrichment offset commit failed");
    }
    Ok(())
}

async fn carry(
    store: &HistoryStore,
    offsets: &OffsetStore,
    (topic, group): (&str, &str),
    batch: &[LogMessage],
    stop: &CancellationToken,
) {
    for message in batch {
        let Some(enrichment) = parse(message) else {
            continue;
        };
        let (span, meta) = trace::record(message, topic, group, &enrichment.session.to_string());
        if !announce(store, &enrichment, &meta, stop)
            .instrument(span)
            .await
        {
            // Stopping: the offset stays unstored and is read again by the next relay.
            return;
        }
    }
    offsets.store_batch(batch);
}

/// Announces one enrichment, waiting up to [`EVENT_WAIT`] for its event to be announced
/// first; retries Valkey failures until `stop`. `false` when stopped before it was done.
async fn announce(
    store: &HistoryStore,
    e: &Enrichment,
    meta: &str,
    stop: &CancellationToken,
) -> bool {
    let json = e.annotation_json();
    let labels: Vec<String> = e
        .labels
        .iter()
        .map(|l| keys::label_channel(&e.session.tenant, &l.label))
        .collect();
    let started = Instant::now();
    loop {
        let force = started.elapsed() >= EVENT_WAIT;
        let annotation = Annotation {
            session: &e.session,
            offset: e.source.offset,
            version: e.version(),
            unversioned_as: &e.model,
            json: &json,
            label_channels: &labels,
            force,
            meta,
        };
        let attempt = || store.annotate(&annotation);
        let outcome = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_max_delay(Duration::from_secs(2))
                    .without_max_times()
                    .with_jitter(),
            )
            .notify(|err, after| {
                metrics::counter!(m::VALKEY_ERRORS).increment(1);
                tracing::warn!(error = %err, retry_in = ?after, "valkey annotate failed; retrying");
            })
            .when(|_| !stop.is_cancelled())
            .await;
        match outcome {
            Ok(Annotated::Published) => {
                let reason = if force {
                    "event_not_seen"
                } else {
                    "after_event"
                };
                metrics::counter!(m::ANNOTATIONS, "how" => reason).increment(1);
                return true;
            }
            Ok(Annotated::Replay) => {
                metrics::counter!(m::ANNOTATIONS, "how" => "replay_skipped").increment(1);
                return true;
            }
            Ok(Annotated::EventNotYetAnnounced) => {
                tokio::select! {
                    () = tokio::time::sleep(EVENT_POLL) => {}
                    () = stop.cancelled() => return false,
                }
            }
            Err(_) => return false,
        }
    }
}

fn parse(message: &LogMessage) -> Option<Enrichment> {
    let value = message.value.as_deref()?;
    match serde_json::from_slice::<Enrichment>(value) {
        Ok(e) => Some(e),
        Err(error) => {
            metrics::counter!(m::ENRICHMENTS_SKIPPED).increment(1);
            tracing::warn!(partition = message.partition, offset = %message.offset, %error, "skipping an enrichment record");
            None
        }
    }
}
