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
    charge_tenants(
        limiter,
        events.iter().map(|e| &e.session.tenant),
        timeout,
        "the tenant is over its publish quota; nothing was written",
    )
    .await
}

/// Charges one unit per item to its tenant (events, tasks); `Err(rate_limited)` with
/// `refusal` if any tenant is over its quota.
pub async fn charge_tenants<'a>(
    limiter: &TenantLimiter,
    tenants: impl IntoIterator<Item = &'a Tenant>,
    timeout: Duration,
    refusal: &str,
) -> Result<(), ApiError> {
    let mut per_tenant: BTreeMap<&Tenant, u32> = BTreeMap::new();
    for tenant in tenants {
        *per_tenant.entry(tenant).or_default() += 1;
    }
    let mut longest = None;
    for (tenant, count) in per_tenant {
        if let Some(wait) = charge_or_allow(limiter, tenant, count, timeout).await {
            metrics::counter!(m::TENANT_LIMITED).increment(u64::from(count));
            longest = longest.max(Some(wait));
        }
    }
    match longest {
        None => Ok(()),
        Some(wait) => Err(ApiError::rate_limited(refusal, wait)),
    }
}

/// Charges `units` to `tenant` on `limiter`: `Some(wait)` when the tenant is over its quota.
/// `None` when allowed, and also when Valkey fails or does not answer within `timeout` (fail
/// open: counted in `agentwire_gateway_tenant_limiter_errors_total` and logged).
pub async fn charge_or_allow(
    limiter: &TenantLimiter,
    tenant: &Tenant,
    units: u32,
    timeout: Duration,
) -> Option<Duration> {
    match tokio::time::timeout(timeout, limiter.charge(tenant, units)).await {
        Ok(Ok(wait)) => wait,
        Ok(Err(err)) => {
            metrics::counter!(m::TENANT_LIMITER_ERRORS, "reason" => "error").increment(1);
            tracing::warn!(error = %err, %tenant, ?limiter, "tenant limiter unavailable; allowing");
            None
        }
        Err(_) => {
            metrics::counter!(m::TENANT_LIMITER_ERRORS, "reason" => "timeout").increment(1);
            tracing::warn!(?timeout, %tenant, ?limiter, "tenant limiter did not answer in time; allowing");
            None
        }
    }
}
