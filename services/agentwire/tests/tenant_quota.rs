//! The per-tenant publish quota is shared by every gateway through Valkey: a tenant that used
//! its burst on one gateway is refused on another (429 with Retry-After, nothing written),
//! while other tenants go on.

mod common;

use agentwire_protocol::SessionKey;
use agentwire_test_support::unique;
use common::{Stack, Valkey, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_quota_is_refused_on_every_gateway() {
    quota_on_every_gateway(&Valkey::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_valkey_cluster_a_tenant_over_its_quota_is_refused_on_every_gateway() {
    quota_on_every_gateway(&Valkey::cluster().await).await;
}

async fn quota_on_every_gateway(valkey: &Valkey) {
    let quota = |config: &mut agentwire_gateway::GatewayConfig| {
        config.tenant_publish_rate = 1;
        config.tenant_publish_burst = 5;
    };
    let mut stack = Stack::configured(valkey.env(), 1, quota).await;
    let other_gateway = stack.spawn_extra_gateway(quota).await;
    let session = stack.session("quota");

    // Warm the producer up (first metadata fetch) on another tenant, so the burst below and
    // the refused publish happen well within one refill interval (1 s).
    let warm_up = SessionKey::parse_parts(&unique("t"), "planner", "warm").expect("key");
    stack
        .http()
        .publish(&event(&warm_up, "p", 1, "warm"))
        .await
        .expect("warm-up");
    let burst: Vec<_> = (1..=5)
        .map(|seq| event(&session, "p", seq, "within the burst"))
        .collect();
    stack
        .http()
        .publish_batch(&burst)
        .await
        .expect("the burst fits the quota");
    let refused = reqwest::Client::new()
        .post(format!("{other_gateway}/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body(agentwire_protocol::cloudevents::to_json(&event(
            &session, "p", 6, "over",
        )))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!((1..=2).contains(&retry_after), "retry after {retry_after}s");
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );

    // Another tenant is not affected.
    let neighbour = SessionKey::parse_parts(&unique("t"), "planner", "s").expect("key");
    let other = agentwire_client::HttpClient::new(&other_gateway).expect("client");
    other
        .publish(&event(&neighbour, "p", 1, "fine"))
        .await
        .expect("another tenant publishes");

    // Only the accepted events were written.
    let log = stack.log_by_key(1).await;
    assert_eq!(log.get(&session.to_string()).map_or(0, Vec::len), 5);
}
