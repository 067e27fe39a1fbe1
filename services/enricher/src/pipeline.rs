//! The enricher pipeline: consumer group on `agent.events` → batches (up to `batch_max`
//! events or `batch_wait_ms`) → the inference thread → one `agent.enriched` record per event
//! with text → offsets stored once every record of the batch is acknowledged.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use agentwire_kafka::{
    ConsumerEvent, EventLog, KafkaSettings, LogConsumer, LogMessage, LogRecord, OffsetStore,
};
use agentwire_protocol::{Enrichment, Offset, SourceRef, cloudevents};
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use agentwire_runtime::trace::TraceHeaders;
use tracing::Instrument as _;

use crate::config::EnricherConfig;
use crate::embedder::{MODEL_ID, ModelFiles};
use crate::trace;
use crate::worker::{Item, Worker, WorkerSettings};
use crate::{EnricherError, metrics as m};

/// Media type of `agent.enriched` records.
pub const ENRICHMENT_JSON: &str = "application/vnd.agentwire.enrichment+json";

/// Batches buffered between the poll thread and inference.
const CHANNEL_BATCHES: usize = 2;

/// Runs the enricher until `shutdown` is cancelled.
pub async fn run(config: EnricherConfig, shutdown: CancellationToken) -> Result<(), EnricherError> {
    config.validate().map_err(EnricherError::Config)?;
    agentwire_runtime::metrics::handle();
    let settings = WorkerSettings {
        files: ModelFiles::locate_in(config.model_dir.as_deref())?,
        device: config.device,
        labels: config.labels.clone(),
        min_score: config.min_score,
        top_k: config.top_k,
        duplicate_threshold: config.duplicate_threshold,
        duplicate_window: config.duplicate_window,
        sessions: NonZeroUsize::new(config.sessions).unwrap_or(NonZeroUsize::MIN),
    };
    let worker = Worker::start(settings).await?;
    let device = worker.adapter().label().to_owned();
    tracing::info!(adapter = %worker.adapter(), version = %worker.version(), "enricher inference ready");

    let kafka = config.kafka.settings();
    // Same partition count as the source, so an enrichment shares its event's partition number.
    agentwire_kafka::ensure_topic_like(&kafka, &config.kafka.topic, &config.enriched_topic).await?;
    let log = EventLog::new(&kafka, &config.enriched_topic)?;

    let (tx, mut rx) = mpsc::channel(CHANNEL_BATCHES);
    let poll_stop = CancellationToken::new();
    let (consumer, offsets) =
        LogConsumer::start(&kafka, &config.consumer(), tx, poll_stop.clone())?;
    tracing::info!(topic = %config.kafka.topic, group = %config.group, out = %config.enriched_topic, "enricher started");

    let context = BatchContext {
        worker: &worker,
        log: &log,
        offsets: &offsets,
        kafka: &kafka,
        topic: &config.kafka.topic,
        group: &config.group,
        enriched_topic: &config.enriched_topic,
        device: &device,
        version: worker.version(),
    };
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            () = shutdown.cancelled() => break,
        };
        match event {
            Some(ConsumerEvent::Batch(batch)) => context.process(&batch, &shutdown).await,
            Some(ConsumerEvent::Assigned(p)) => {
                tracing::info!(partitions = ?p, "partitions assigned")
            }
            Some(ConsumerEvent::Revoked(p)) => {
                tracing::info!(partitions = ?p, "partitions revoked")
            }
            None => break,
        }
    }
    poll_stop.cancel();
    let _ = tokio::task::spawn_blocking(move || consumer.join()).await;
    if let Err(err) = offsets.commit_sync() {
        tracing::warn!(error = %err, "final offset commit failed; the next enricher re-reads a little");
    }
    tracing::info!("enricher stopped");
    Ok(())
}

struct BatchContext<'a> {
    worker: &'a Worker,
    log: &'a EventLog,
    offsets: &'a OffsetStore,
    kafka: &'a KafkaSettings,
    topic: &'a str,
    group: &'a str,
    enriched_topic: &'a str,
    device: &'a str,
    /// The enrichment version of every record (`Worker::version`).
    version: &'a str,
}

/// A parsed record with text.
struct Source {
    item: Item,
    partition: i32,
    event_id: Option<uuid::Uuid>,
    /// The trace context the record arrived with.
    trace: Option<TraceHeaders>,
}

impl BatchContext<'_> {
    /// Enriches and publishes one batch, retrying until it succeeds or `stop` is cancelled;
    /// stores its offsets only then, so a crash re-enriches instead of skipping.
    async fn process(&self, batch: &[LogMessage], stop: &CancellationToken) {
        let sources: Vec<Source> = batch.iter().filter_map(parse).collect();
        let mut delay = Duration::from_millis(100);
        while !sources.is_empty() {
            match self.publish(&sources).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "enriching a batch failed; retrying it");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let highest = self.offsets.store_batch(batch);
        self.record_lag(&highest).await;
    }

    async fn publish(&self, sources: &[Source]) -> Result<(), EnricherError> {
        let batch = trace::batch_span(
            sources.iter().map(|s| s.trace.as_ref()),
            sources.len(),
            self.device,
        );
        let spans: Vec<tracing::Span> = sources
            .iter()
            .map(|s| {
                trace::event_span(
                    s.trace.as_ref(),
                    &batch,
                    self.topic,
                    self.group,
                    &s.item.session.to_string(),
                    s.item.offset.0,
                )
            })
            .collect();
        let items = sources.iter().map(|s| s.item.clone()).collect();
        let enriched = self
            .worker
            .enrich(items)
            .instrument(trace::inference_span(&batch, sources.len()))
            .await?;
        let mut acks = Vec::with_capacity(sources.len());
        for ((source, result), span) in sources.iter().zip(enriched).zip(&spans) {
            let labels = result
                .labels
                .iter()
                .map(|l| l.label.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let send = trace::send_span(
                span,
                self.enriched_topic,
                &source.item.session.to_string(),
                &labels,
            );
            let headers = agentwire_runtime::trace::outgoing(&send, source.trace.as_ref());
            let record = Enrichment {
                session: source.item.session.clone(),
                source: SourceRef {
                    topic: self.topic.to_owned(),
                    partition: source.partition,
                    offset: source.item.offset,
                },
                event_id: source.event_id,
                labels: result.labels,
                duplicate_of: result.duplicate.map(|d| d.of),
                duplicate_score: result.duplicate.map(|d| d.score),
                model: MODEL_ID.to_owned(),
                version: self.version.to_owned(),
                device: self.device.to_owned(),
                embedding: result.embedding,
            };
            let value =
                serde_json::to_string(&record).map_err(|e| EnricherError::Encode(e.to_string()))?;
            // Enqueued in order: records of one session keep their order in the topic.
            acks.push(
                self.log
                    .enqueue(&LogRecord {
                        key: source.item.session.to_string(),
                        value,
                        content_type: ENRICHMENT_JSON,
                        traceparent: headers.as_ref().map(|h| h.traceparent.clone()),
                        tracestate: headers.and_then(|h| h.tracestate),
                    })
                    .instrument(send)
                    .await?,
            );
        }
        for ack in join_all(acks).await {
            if let Err(err) = ack {
                metrics::counter!(m::PUBLISH_ERRORS).increment(1);
                return Err(err.into());
            }
        }
        Ok(())
    }

    /// Consumer lag per partition after this batch: the log's end minus the next offset.
    async fn record_lag(&self, highest: &BTreeMap<i32, Offset>) {
        for (&partition, &offset) in highest {
            if let Ok((_, high)) =
                agentwire_kafka::watermarks(self.kafka, self.topic, partition).await
            {
                let lag = (high - i64::try_from(offset.0).unwrap_or(i64::MAX) - 1).max(0);
                metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string())
                    .set(lag as f64);
            }
        }
    }
}

/// The text to enrich, or `None` (counted) for records without any.
fn parse(message: &LogMessage) -> Option<Source> {
    let skip = |reason: &'static str| {
        metrics::counter!(m::SKIPPED, "reason" => reason).increment(1);
        None
    };
    let Some(json) = message
        .value
        .as_deref()
        .and_then(|v| std::str::from_utf8(v).ok())
    else {
        return skip("not_utf8");
    };
    let Ok(event) = cloudevents::from_json(json) else {
        return skip("not_an_event");
    };
    let Some(text) = event.text.filter(|t| !t.trim().is_empty()) else {
        return skip("no_text");
    };
    Some(Source {
        item: Item {
            session: event.session,
            offset: message.offset,
            text,
        },
        partition: message.partition,
        event_id: event.id,
        trace: trace::incoming(message),
    })
}
