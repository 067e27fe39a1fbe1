//! Per-tenant publish limits shared by every gateway instance: a GCRA (generic cell rate
//! algorithm) bucket per tenant, kept in Valkey and charged atomically by `lua/gcra.lua`, so
//! one hot tenant cannot starve the others whichever gateway it talks to. The same bucket, under
//! another key, charges the records a tenant's history reads scan in the log
//! ([`TenantLimiter::log_scans`]).

use std::time::Duration;

use agentwire_protocol::Tenant;
use redis::Script;

use crate::connection::Connection;
use crate::error::ValkeyError;
use crate::keys;

static GCRA: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/gcra.lua")));

/// A tenant's allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantQuota {
    /// Events per second, sustained.
    pub per_second: u32,
    /// Events that may arrive at once.
    pub burst: u32,
}

/// Charges tenants' publishes against their quota.
#[derive(Clone)]
pub struct TenantLimiter {
    conn: Connection,
    quota: TenantQuota,
    key: fn(&Tenant) -> String,
}

impl std::fmt::Debug for TenantLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLimiter")
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

impl TenantLimiter {
    /// The publish quota: one unit per event.
    pub fn new(conn: Connection, quota: TenantQuota) -> Self {
        Self {
            conn,
            quota,
            key: keys::tenant_rate,
        }
    }

    /// The log-scan quota: one unit per record a history read may examine in the log.
    pub fn log_scans(conn: Connection, quota: TenantQuota) -> Self {
        Self {
            conn,
            quota,
            key: keys::tenant_scan_rate,
        }
    }

    /// Charges `events` units to `tenant`: `None` when allowed, else how long to wait.
    pub async fn charge(
        &self,
        tenant: &Tenant,
        events: u32,
    ) -> Result<Option<Duration>, ValkeyError> {
        let interval = 1000.0 / f64::from(self.quota.per_second.max(1));
        let tolerance = interval * f64::from(self.quota.burst.max(1) - 1);
        let wait_ms: u64 = GCRA
            .key((self.key)(tenant))
            .arg(interval)
            .arg(tolerance)
            .arg(events.max(1))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }
}
