//! The relay pipeline, wired downstream first: Valkey store, then the Kafka poll loop that
//! feeds it through a bounded channel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agentwire_kafka::{ConsumerEvent, LogConsumer, LogMessage, OffsetStore};
use agentwire_protocol::{Offset, SessionKey, cloudevents};
use agentwire_valkey::{Append, HistoryStore, LogProbes};
use backon::{ExponentialBuilder, Retryable as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::log_watch::LogWatch;
use crate::trace;
use crate::{RelayError, metrics as m};
use tracing::Instrument as _;

/// Batches buffered between the poll thread and the Valkey writer.
const CHANNEL_BATCHES: usize = 4;
/// The first pause before a failed Valkey write is tried again (it doubles up to 2 s): a
/// cluster failover or a restart is over in seconds, and every pause adds to the delay
/// subscribers see.
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(50);
/// How long a stopping relay keeps trying to write the batches it already read.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

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
    // Stops everything the relay runs: on shutdown, or when the log was reset under it.
    let stop = shutdown.child_token();
    let carrier = tokio::spawn(crate::enriched::run(
        config.clone(),
        store.clone(),
        stop.clone(),
    ));
    let task_carrier = tokio::spawn(crate::tasks::run(
        config.clone(),
        agentwire_valkey::TaskStore::new(
            store.connection(),
            Duration::from_secs(config.task_retention_secs),
            config.kafka.tasks_topic.clone(),
        ),
        stop.clone(),
    ));

    let topic = config.kafka.topic.clone();
    let mut watch = tokio::spawn(
        LogWatch::new(
            &config.kafka.settings(),
            &topic,
            LogProbes::new(store.connection(), &topic),
        )?
        .run(stop.clone()),
    );
    let (mut watching, mut reset) = (true, None);

    // The offset each owned partition was appended through, as far as this relay knows.
    let mut marks = Marks::default();
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            ended = &mut watch, if watching => {
                watching = false;
                match ended {
                    Ok(Some(found)) => {
                        reset = Some(found);
                        break;
                    }
                    Ok(None) => {}
                    Err(err) => tracing::warn!(error = %err, "the log reset watch panicked"),
                }
                continue;
            }
            () = stop.cancelled() => break,
        };
        match event {
            Some(ConsumerEvent::Batch(batch)) => {
                write_batch(
                    &store,
                    &offsets,
                    (&topic, &config.group),
                    &mut marks,
                    &batch,
                    &shutdown,
                )
                .await
            }
            Some(ConsumerEvent::Assigned(p)) => {
                tracing::info!(partitions = ?p, "partitions assigned")
            }
            Some(ConsumerEvent::Revoked(p)) => {
                marks.retain(|(partition, _), _| !p.contains(partition));
                tracing::info!(partitions = ?p, "partitions revoked")
            }
            None => break,
        }
    }

    stop.cancel();
    // Stop polling, finish what was already read (for at most DRAIN_GRACE: during a Valkey
    // outage what is left stays uncommitted and the next relay reads it again), commit it.
    poll_stop.cancel();
    rx.close();
    let drain = CancellationToken::new();
    let deadline = {
        let drain = drain.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DRAIN_GRACE).await;
            drain.cancel();
        })
    };
    while let Some(event) = rx.recv().await {
        if let ConsumerEvent::Batch(batch) = event {
            write_batch(
                &store,
                &offsets,
                (&topic, &config.group),
                &mut marks,
                &batch,
                &drain,
            )
            .await;
        }
    }
    deadline.abort();
    // The poll thread ends within one poll interval; join it off the async runtime.
    let _ = tokio::task::spawn_blocking(move || consumer.join()).await;
    if let Err(err) = offsets.commit_sync() {
        tracing::warn!(error = %err, "final offset commit failed; the next relay re-reads a little");
    }
    match task_carrier.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "the task carrier failed"),
        Err(err) => tracing::warn!(error = %err, "the task carrier panicked"),
    }
    match carrier.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "the enrichment carrier failed"),
        Err(err) => tracing::warn!(error = %err, "the enrichment carrier panicked"),
    }
    if let Some(found) = reset {
        metrics::counter!(m::LOG_RESETS).increment(1);
        let err = RelayError::LogReset(found);
        tracing::error!(error = %err, "relay stopped");
        return Err(err);
    }
    tracing::info!("relay stopped");
    Ok(())
}

/// The last offset appended per partition (and mark scope: [`HistoryStore::mark_scope`]) by
/// this relay since it was assigned the partition.
type Marks = HashMap<(i32, Option<u16>), Offset>;

/// Writes one batch to Valkey, retrying until it succeeds or `stop` is cancelled, then
/// stores the highest offset of each partition in it.
async fn write_batch(
    store: &HistoryStore,
    offsets: &OffsetStore,
    (topic, group): (&str, &str),
    marks: &mut Marks,
    batch: &[LogMessage],
    stop: &CancellationToken,
) {
    let parsed: Vec<_> = batch
        .iter()
        .filter_map(|message| {
            let (session, partition, offset, json) = parse(message)?;
            let (span, meta) = trace::record(message, topic, group, &session.to_string());
            Some((session, partition, offset, json, span, meta))
        })
        .collect();
    let valkey = trace::valkey_span(parsed.len());
    for (.., span, _) in &parsed {
        if let Some(cx) = agentwire_runtime::trace::outgoing(span, None) {
            agentwire_runtime::trace::add_link(&valkey, &cx);
        }
    }
    let mut previous = marks.clone();
    let appends: Vec<Append<'_>> = parsed
        .iter()
        .map(|(session, partition, offset, json, _, meta)| {
            // A partition's first record since assignment follows what the relay before this
            // one committed: everything up to the record before it. A mark per slot (on a
            // cluster) covers only that slot's sessions, whose last record is not known here.
            let scope = store.mark_scope(session);
            let expected = previous.insert((*partition, scope), *offset).or_else(|| {
                scope
                    .is_none()
                    .then(|| offset.0.checked_sub(1).map(Offset))
                    .flatten()
            });
            Append {
                session,
                topic,
                partition: *partition,
                offset: *offset,
                event_json: json,
                expected,
                meta,
            }
        })
        .collect();
    let started = Instant::now();
    let attempt = || async { store.append_batch(&appends).await };
    let written = attempt
        .retry(ExponentialBuilder::default().with_min_delay(RETRY_FIRST_DELAY).with_max_delay(Duration::from_secs(2)).without_max_times().with_jitter())
        .notify(|err, after| {
            metrics::counter!(m::VALKEY_ERRORS).increment(1);
            tracing::warn!(error = %err, retry_in = ?after, "valkey write failed; retrying the batch");
        })
        .when(|_| !stop.is_cancelled())
        .instrument(valkey.clone())
        .await;
    let Ok(appended) = written else {
        // Stopping: these offsets stay unstored and are read again by the next relay.
        return;
    };
    *marks = previous;
    if appended.rollbacks > 0 {
        metrics::counter!(m::VALKEY_ROLLBACKS).increment(appended.rollbacks as u64);
        tracing::error!(
            detections = appended.rollbacks,
            "valkey lost appends it had acknowledged (restored from a snapshot, or a lagging replica promoted): \
             the affected windows now read as broken chains and their readers fill them from the log"
        );
    }
    if appended.mismatches > 0 {
        metrics::counter!(m::LOG_MISMATCHES).increment(appended.mismatches as u64);
        tracing::error!(
            records = appended.mismatches,
            "session windows hold other records at these offsets: the log topic was reset (deleted and re-created) \
             under this Valkey, and its windows belong to the old log; these records were not relayed. \
             Bump AGENTWIRE_LOG_GENERATION and clear the windows (docs/operations.md, \"Re-creating the log topic\")"
        );
    }
    let written = appended.written;
    valkey.record(
        "agentwire.relay.written",
        agentwire_runtime::trace::int(written),
    );
    drop(valkey);
    metrics::histogram!(m::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(m::BATCH_SIZE).record(appends.len() as f64);
    metrics::counter!(m::EVENTS_WRITTEN).increment(written as u64);
    metrics::counter!(m::EVENTS_REPLAYED).increment((appends.len() - written) as u64);

    let states = agentwire_valkey::SessionStateStore::new(store.connection());
    crate::states::restore(
        &states,
        parsed
            .iter()
            .map(|(session, _, _, json, ..)| (session, json.as_str())),
    )
    .await;
    offsets.store_batch(batch);
}

/// Turns a record into what its session's window stores at its offset. A record of a session
/// that is not a valid event of it becomes a gap event (counted, logged as an error), so every
/// record of a session advances its readers' cursors and none vanishes silently. Only a record
/// without a session key has no session to go to: it is counted and logged, and its offset is
/// stored like any other (it can never become readable).
fn parse(message: &LogMessage) -> Option<(SessionKey, i32, Offset, String)> {
    let (partition, offset) = (message.partition, message.offset);
    let session = message
        .key
        .as_deref()
        .and_then(|key| std::str::from_utf8(key).ok())
        .and_then(|key| key.parse::<SessionKey>().ok());
    let Some(session) = session else {
        metrics::counter!(m::RECORDS_UNROUTABLE).increment(1);
        tracing::error!(partition, %offset, "a record of the log has no session key: no session can receive it");
        return None;
    };
    let entry = cloudevents::read_log_entry(&session, partition, offset, message.value.as_deref());
    if let Some(reason) = entry.unreadable {
        metrics::counter!(m::RECORDS_UNREADABLE, "reason" => reason).increment(1);
        tracing::error!(%session, partition, %offset, reason, "a record of the log is not a valid event of its session: its readers get a gap event in its place");
    }
    Some((session, partition, offset, entry.json))
}
