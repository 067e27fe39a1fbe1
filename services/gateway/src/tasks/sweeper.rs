//! Makes the time-driven transitions of every tenant's queues without waiting for a claim:
//! an expired lease gives its task back (`lease_expired`) or dead-letters it on its last
//! attempt, and a due retry becomes ready (and wakes consumers). Every gateway runs one;
//! the script is atomic, so two sweeps never make one transition twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::tasks::TaskQueue;

/// Sweeps every `interval` until `shutdown`.
pub async fn run(queue: TaskQueue, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let tenants = match queue.store().tenants().await {
            Ok(tenants) => tenants,
            Err(err) => {
                tracing::debug!(error = %err, "task sweep: Valkey unavailable");
                continue;
            }
        };
        for tenant in tenants {
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
