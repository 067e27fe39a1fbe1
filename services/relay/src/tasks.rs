//! Carries `agent.tasks` into Valkey: every task transition in the log is applied to the
//! tenant's queue (`TaskStore::apply`, newer versions only). The gateways write Valkey
//! themselves as they make transitions; this keeps the queues in step with the log when a
//! gateway's own write did not happen (an `enqueued` record appended by a gateway that then
//! lost Valkey), so a task acknowledged to a client always reaches its queue.
//!
//! After Valkey lost its data (restarted empty, flushed) the queues are rebuilt from the
//! whole log first (`agentwire_drill::rebuild_tasks`), before another record is applied: a
//! record applied to an empty Valkey could otherwise bring back, as ready, a task whose
//! later records (completed, say) the carrier has not reached yet, and it would run again.

use std::time::Duration;

use agentwire_kafka::{ConsumerEvent, ConsumerSettings, LogConsumer, LogMessage, OffsetStore};
use agentwire_protocol::TaskRecord;
use agentwire_valkey::{Applied, TaskStore};
use backon::{ExponentialBuilder, Retryable as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;

/// `fetch.wait.max.ms` of the task carrier: it is a safety net behind the gateways' own
/// Valkey writes, not on the latency path, so it need not poll the broker 250 times a
/// second per idle partition as the event relay does.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// How often the carrier looks whether Valkey still holds the queues, between records.
const INTACT_CHECK: Duration = Duration::from_secs(1);
use crate::{RelayError, metrics as m};

/// Runs the task carrier until `shutdown` is cancelled.
pub async fn run(
    config: RelayConfig,
    store: TaskStore,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let kafka = config.kafka.settings();
    agentwire_kafka::ensure_topic_like(&kafka, &config.kafka.topic, &config.kafka.tasks_topic)
        .await?;
    let (tx, mut rx) = mpsc::channel(4);
    let poll_stop = CancellationToken::new();
    let settings = ConsumerSettings {
        batch_max: config.batch_max,
        fetch_wait: FETCH_WAIT,
        ..ConsumerSettings::new(&config.tasks_group, &config.kafka.tasks_topic)
    };
    let (consumer, offsets) = LogConsumer::start(&kafka, &settings, tx, poll_stop.clone())?;
    tracing::info!(topic = %config.kafka.tasks_topic, group = %config.tasks_group, "task carrier started");
    // Valkey may lose the queues while no record arrives: looked at on a timer too.
    let mut checks = tokio::time::interval(INTACT_CHECK);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            _ = checks.tick() => {
                if ensure_intact(&config, &store, &shutdown).await {
                    continue;
                }
                break;
            }
            () = shutdown.cancelled() => break,
        };
        match event {
            Some(ConsumerEvent::Batch(batch)) => {
                if !ensure_intact(&config, &store, &shutdown).await
                    || !carry(&config, &store, &offsets, &batch, &shutdown).await
                {
                    break;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    poll_stop.cancel();
    let _ = tokio::task::spawn_blocking(move || consumer.join()).await;
    if let Err(err) = offsets.commit_sync() {
        tracing::warn!(error = %err, "final task offset commit failed");
    }
    Ok(())
}

/// Rebuilds the queues from the log if Valkey lost them (retried until it succeeds);
/// `false` when stopped first.
async fn ensure_intact(config: &RelayConfig, store: &TaskStore, stop: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.is_intact().await {
            Ok(true) => return true,
            Ok(false) => {
                tracing::warn!(topic = %config.kafka.tasks_topic, "the task queues are not in Valkey (it lost its data): rebuilding them from the log");
                let started = std::time::Instant::now();
                match agentwire_drill::rebuild_tasks(
                    &config.kafka.settings(),
                    &config.kafka.tasks_topic,
                    store,
                    Duration::from_secs(config.task_retention_secs),
                    agentwire_protocol::task::now_ms(),
                )
                .await
                {
                    Ok(summary) => {
                        metrics::counter!(m::TASK_REBUILDS).increment(1);
                        tracing::info!(
                            tasks = summary.tasks,
                            applied = summary.applied,
                            seconds = started.elapsed().as_secs_f64(),
                            "task queues rebuilt from the log"
                        );
                        return true;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "rebuilding the task queues failed; retrying")
                    }
                }
            }
            Err(err) => {
                metrics::counter!(m::VALKEY_ERRORS).increment(1);
                tracing::warn!(error = %err, "valkey unavailable to the task carrier; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return false,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Applies a batch; `false` when stopped before it was done (its offsets stay unstored).
/// A task Valkey does not know is created only after the carrier made sure Valkey did not
/// lose the queues meanwhile (rebuilding them if it did).
async fn carry(
    config: &RelayConfig,
    store: &TaskStore,
    offsets: &OffsetStore,
    batch: &[LogMessage],
    stop: &CancellationToken,
) -> bool {
    for record in batch.iter().flat_map(parse) {
        let mut outcome = apply(store, &record, false, stop).await;
        if outcome == Some(Applied::Absent) {
            if !ensure_intact(config, store, stop).await {
                return false;
            }
            outcome = apply(store, &record, true, stop).await;
        }
        let how = match outcome {
            Some(Applied::Applied) => "applied",
            Some(Applied::Stale) => "stale",
            Some(Applied::Unknown) => "unknown_task",
            Some(Applied::Duplicate) => "duplicate",
            Some(Applied::Absent) => "absent",
            None => return false,
        };
        metrics::counter!(m::TASK_RECORDS, "how" => how).increment(1);
    }
    offsets.store_batch(batch);
    true
}

/// Applies one transition, retrying Valkey failures until `stop` (`None` then).
async fn apply(
    store: &TaskStore,
    record: &TaskRecord,
    may_create: bool,
    stop: &CancellationToken,
) -> Option<Applied> {
    let attempt = || store.apply(record, may_create);
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_max_delay(Duration::from_secs(2))
                .without_max_times()
                .with_jitter(),
        )
        .notify(|err, after| {
            metrics::counter!(m::VALKEY_ERRORS).increment(1);
            tracing::warn!(error = %err, retry_in = ?after, "valkey task apply failed; retrying");
        })
        .when(|_| !stop.is_cancelled())
        .await
        .ok()
}

/// The transitions a log record holds (one, or a gateway's batch).
fn parse(message: &LogMessage) -> Vec<TaskRecord> {
    let Some(value) = message.value.as_deref() else {
        return Vec::new();
    };
    match TaskRecord::parse_all(value) {
        Ok(records) => records,
        Err(error) => {
            metrics::counter!(m::TASK_RECORDS, "how" => "skipped").increment(1);
            tracing::warn!(partition = message.partition, offset = %message.offset, %error, "skipping a task record");
            Vec::new()
        }
    }
}
