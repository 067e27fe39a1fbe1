//! Expires registrations whose agent stopped heartbeating, without waiting for anyone to
//! look: every gateway runs one; the script hands each expired registration to exactly one
//! sweep, which records it (`agent.registry.expired`). An agent that died is gone from
//! `discover` at its expiry (reads skip expired registrations) and recorded within one
//! sweep interval of it.

use std::time::Duration;

use agentwire_protocol::RegistryEventKind;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// Sweeps every `interval` until `shutdown`.
pub async fn run(registry: Registry, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let tenants = match registry.store().tenants().await {
            Ok(tenants) => tenants,
            Err(err) => {
                tracing::debug!(error = %err, "registry sweep: Valkey unavailable");
                continue;
            }
        };
        for tenant in tenants {
            match registry.store().sweep(&tenant).await {
                Ok(expired) => {
                    for registration in &expired {
                        registry
                            .record(RegistryEventKind::Expired, registration)
                            .await;
                    }
                }
                Err(err) => tracing::debug!(error = %err, %tenant, "registry sweep failed"),
            }
        }
    }
}
