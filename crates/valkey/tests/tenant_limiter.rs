//! The GCRA tenant limiter against a real Valkey: a burst passes, the next event waits about
//! one emission interval, and tenants do not share buckets.

use std::time::Duration;

use agentwire_protocol::Tenant;
use agentwire_test_support::{TestEnv, unique};
use agentwire_valkey::{HistorySettings, HistoryStore, TenantLimiter, TenantQuota};

#[tokio::test]
async fn a_burst_passes_then_the_tenant_waits() {
    let env = TestEnv::from_env();
    let store = HistoryStore::connect(&env.valkey_url, HistorySettings::default())
        .await
        .expect("valkey");
    let limiter = TenantLimiter::new(
        store.connection(),
        TenantQuota {
            per_second: 1,
            burst: 5,
        },
    );
    let tenant = Tenant::new(unique("tenant")).expect("tenant");
    for i in 0..5 {
        assert_eq!(
            limiter.charge(&tenant, 1).await.expect("charge"),
            None,
            "event {i} of the burst"
        );
    }
    let wait = limiter
        .charge(&tenant, 1)
        .await
        .expect("charge")
        .expect("over the burst");
    assert!(
        wait > Duration::from_millis(500) && wait <= Duration::from_millis(1000),
        "{wait:?}"
    );
    let other = Tenant::new(unique("tenant")).expect("tenant");
    assert_eq!(limiter.charge(&other, 5).await.expect("charge"), None);
    assert!(limiter.charge(&other, 1).await.expect("charge").is_some());
}
