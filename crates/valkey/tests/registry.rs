//! `lua/registry.lua` on a real Valkey: joins, renewals and updates, discovery by
//! capability, heartbeats, expiry (a dead registration is invisible at once and swept
//! exactly once however many sweepers race), and deregistration.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use agentwire_protocol::{AgentId, Capability, RegisterSpec, Registration, Tenant};
use agentwire_test_support::{TestEnv, unique};
use agentwire_valkey::{Connection, Deregistered, RegisterKind, RegistryStore};

async fn store() -> RegistryStore {
    let conn = Connection::connect(&TestEnv::from_env().valkey_url)
        .await
        .expect("connect");
    RegistryStore::new(conn, "agent.events")
}

fn tenant() -> Tenant {
    Tenant::new(unique("reg")).expect("tenant")
}

fn registration(tenant: &Tenant, agent: &str, caps: &[&str], ttl_ms: u64) -> Registration {
    let json = serde_json::json!({
        "agent_id": agent, "capabilities": caps, "ttl_ms": ttl_ms, "version": "1.0",
    });
    let spec: RegisterSpec = serde_json::from_value(json).expect("spec");
    spec.into_registration(tenant.clone(), Some("tester".into()), 7)
        .expect("valid")
}

fn ids(agents: &[agentwire_protocol::AgentView]) -> Vec<String> {
    agents
        .iter()
        .map(|a| a.registration.agent_id.to_string())
        .collect()
}

fn cap(name: &str) -> Capability {
    Capability::new(name).expect("capability")
}

fn agent(name: &str) -> AgentId {
    AgentId::new(name).expect("agent id")
}

#[tokio::test]
async fn registers_renews_updates_and_discovers_by_capability() {
    let store = store().await;
    let t = tenant();
    let a = registration(&t, "a", &["search", "code"], 30_000);
    let b = registration(&t, "b", &["search"], 30_000);
    assert_eq!(
        store.register(&a).await.expect("a").kind,
        RegisterKind::Joined
    );
    assert_eq!(
        store.register(&b).await.expect("b").kind,
        RegisterKind::Joined
    );
    assert_eq!(
        store.register(&a).await.expect("a").kind,
        RegisterKind::Renewed
    );

    let search = store
        .discover(&t, Some(&cap("search")))
        .await
        .expect("discover");
    assert_eq!(ids(&search), ["a", "b"]);
    assert_eq!(search[0].registration.version.as_deref(), Some("1.0"));
    assert_eq!(search[0].registration.principal.as_deref(), Some("tester"));
    assert!(
        search[0].registration.registered_at_ms > 0,
        "the join time is Valkey's"
    );
    assert_eq!(
        ids(&store.discover(&t, Some(&cap("code"))).await.expect("code")),
        ["a"]
    );
    assert_eq!(
        ids(&store.discover(&t, None).await.expect("all")),
        ["a", "b"]
    );

    // A changed document is an update, and leaves its old capabilities.
    let a2 = registration(&t, "a", &["summarise"], 30_000);
    assert_eq!(
        store.register(&a2).await.expect("a2").kind,
        RegisterKind::Updated
    );
    assert_eq!(
        ids(&store.discover(&t, Some(&cap("code"))).await.expect("code")),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&store
            .discover(&t, Some(&cap("summarise")))
            .await
            .expect("s")),
        ["a"]
    );

    // Another tenant sees none of it.
    assert!(
        store
            .discover(&tenant(), None)
            .await
            .expect("other")
            .is_empty()
    );

    // Heartbeats carry the load; a heartbeat of an unknown agent says so.
    let before = store
        .get(&t, &agent("b"))
        .await
        .expect("get")
        .expect("live");
    let after = store
        .heartbeat(&t, &agent("b"), Some(3))
        .await
        .expect("heartbeat")
        .expect("known");
    assert!(after >= before.expires_at_ms);
    let b_now = store
        .get(&t, &agent("b"))
        .await
        .expect("get")
        .expect("live");
    assert_eq!(b_now.in_flight, 3);
    assert_eq!(
        store
            .heartbeat(&t, &agent("nobody"), None)
            .await
            .expect("hb"),
        None
    );

    match store.deregister(&t, &agent("b")).await.expect("deregister") {
        Some(Deregistered::Left(r)) => assert_eq!(r.agent_id.as_str(), "b"),
        other => panic!("expected left, got {other:?}"),
    }
    assert_eq!(
        store.deregister(&t, &agent("b")).await.expect("again"),
        None
    );
    assert_eq!(
        ids(&store.discover(&t, Some(&cap("search"))).await.expect("d")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn an_expired_registration_is_invisible_and_swept_exactly_once() {
    let store = store().await;
    let t = tenant();
    let names: Vec<String> = (0..40).map(|i| format!("agent-{i}")).collect();
    for name in &names {
        store
            .register(&registration(&t, name, &["work"], 1_000))
            .await
            .expect("register");
    }
    let survivor = registration(&t, "survivor", &["work"], 60_000);
    store.register(&survivor).await.expect("survivor");

    // Wait (polling, bounded) until the short registrations are past their expiry.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = store
            .discover(&t, Some(&cap("work")))
            .await
            .expect("discover");
        if ids(&live) == ["survivor"] {
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {:?}", ids(&live));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Expired but unswept: a heartbeat does not bring it back.
    assert_eq!(
        store
            .heartbeat(&t, &agent("agent-0"), None)
            .await
            .expect("hb"),
        None
    );

    // Eight sweepers race; each expired registration comes out of exactly one of them.
    let sweeps = futures::future::join_all((0..8).map(|_| {
        let store = store.clone();
        let t = t.clone();
        async move { store.sweep(&t).await.expect("sweep") }
    }))
    .await;
    let swept: Vec<String> = sweeps
        .into_iter()
        .flatten()
        .map(|r| r.agent_id.to_string())
        .collect();
    assert_eq!(swept.len(), names.len(), "each once: {swept:?}");
    let unique: HashSet<&String> = swept.iter().collect();
    assert_eq!(unique.len(), names.len());
    assert!(!unique.contains(&"survivor".to_owned()));
    assert!(store.sweep(&t).await.expect("again").is_empty());
    assert!(store.tenants().await.expect("tenants").contains(&t));
}

#[tokio::test]
async fn registering_over_an_expired_registration_reports_the_expiry() {
    let store = store().await;
    let t = tenant();
    store
        .register(&registration(&t, "a", &["work"], 1_000))
        .await
        .expect("register");
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.get(&t, &agent("a")).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = store
        .register(&registration(&t, "a", &["work"], 30_000))
        .await
        .expect("register again");
    assert_eq!(again.kind, RegisterKind::Joined);
    assert_eq!(
        again.expired.map(|r| r.agent_id.to_string()).as_deref(),
        Some("a"),
        "the unswept expiry is reported, to be logged before the new join"
    );
    assert!(store.sweep(&t).await.expect("sweep").is_empty());
}
