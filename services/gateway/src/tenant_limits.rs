//! The per-tenant publish quota, shared by every gateway through Valkey (see
//! `agentwire_valkey::TenantLimiter`). Both the HTTP and the WebSocket publish paths charge it
//! before anything is written. If Valkey cannot answer, publishing goes on (fail open, counted
//! in a metric): the limit protects fairness, it must not turn a cache outage into an outage
//! of the durable path. A Valkey that hangs instead of refusing is the same outage: each check
//! gets `AGENTWIRE_TENANT_QUOTA_TIMEOUT_MS` (100 ms) and fails open after it.

use std::collections::BTreeMap;
use std::time::Duration;

use agentwire_protocol::{Event, Tenant};
use agentwire_valkey::TenantLimiter;

use crate::error::ApiError;
use crate::metrics as m;

/// Charges every tenant of `events`; `Err(rate_limited)` if any tenant is over its quota.
/// A check that takes longer than `timeout` allows the publish.
pub async fn charge(
    limiter: &TenantLimiter,
    events: &[Event],
    timeout: Duration,
) -> Result<(), ApiError> {
    let mut per_tenant: BTreeMap<&Tenant, u32> = BTreeMap::new();
    for event in events {
        *per_tenant.entry(&event.session.tenant).or_default() += 1;
    }
    let mut longest = None;
    for (tenant, count) in per_tenant {
        match tokio::time::timeout(timeout, limiter.charge(tenant, count)).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(wait))) => {
                metrics::counter!(m::TENANT_LIMITED).increment(u64::from(count));
                longest = longest.max(Some(wait));
            }
            Ok(Err(err)) => {
                metrics::counter!(m::TENANT_LIMITER_ERRORS, "reason" => "error").increment(1);
                tracing::warn!(error = %err, %tenant, "tenant limiter unavailable; allowing the publish");
            }
            Err(_) => {
                metrics::counter!(m::TENANT_LIMITER_ERRORS, "reason" => "timeout").increment(1);
                tracing::warn!(?timeout, %tenant, "tenant limiter did not answer in time; allowing the publish");
            }
        }
    }
    match longest {
        None => Ok(()),
        Some(wait) => Err(ApiError::rate_limited(
            "the tenant is over its publish quota; nothing was written",
            wait,
        )),
    }
}
