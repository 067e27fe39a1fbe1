//! Makes the time-driven transitions of every tenant's queues without waiting for a claim:
//! an expired lease gives its task back (`lease_expired`) or dead-letters it on its last
//! attempt, and a due retry becomes ready (and wakes consumers). Every gateway runs one;
//! the script is atomic, so two sweeps never make one transition twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::tasks::TaskQueue;

/// How often the queue-depth gauges are refreshed, in sweeps.
const DEPTH_EVERY: u64 = 10;

/// Sweeps every `interval` until `shutdown`; every [`DEPTH_EVERY`] sweeps it also refreshes
/// the queue-depth gauges (`agentwire_gateway_task_queue_depth`).
pub async fn run(queue: TaskQueue, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps = 0u64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        sweeps += 1;
        let depth = sweeps % DEPTH_EVERY == 1;
        let tenants = match queue.store().tenants().await {
            Ok(tenants) => tenants,
            Err(err) => {
                tracing::debug!(error = %err, "task sweep: Valkey unavailable");
                continue;
            }
        };
        for tenant in tenants {
            if depth && let Err(err) = queue.stats(&tenant, &[]).await {
                tracing::debug!(error = %err.message, %tenant, "queue depth not read");
            }
            match queue.store().sweep(&tenant).await {
                Ok(transitions) if transitions.is_empty() => {}
                Ok(transitions) => {
                    if let Err(err) = queue.record(&tenant, &transitions).await {
                        // Valkey moved on; the log learns of it with the next transition.
                        tracing::warn!(error = %err.message, %tenant, "sweep transitions not recorded");
                    }
                    for t in &transitions {
                        if t.kind == agentwire_protocol::TaskEventKind::DeadLettered {
                            queue.reply(&tenant, t).await;
                        }
                    }
                    queue.wake().local(&tenant);
                }
                Err(err) => tracing::debug!(error = %err, %tenant, "task sweep failed"),
            }
        }
    }
}
