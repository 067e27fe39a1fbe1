//! `lua/session_state.lua` on a real Valkey: updates are whole or nothing, compare-and-set by
//! version, field values kept byte for byte, restores only of newer states, and (property
//! test) a budget consumed by 50 concurrent clients in random amounts is never overspent.

use std::sync::Arc;

use agentwire_protocol::SessionKey;
use agentwire_protocol::session_state::{RunStatus, StateUpdate};
use agentwire_test_support::{TestEnv, unique};
use agentwire_valkey::{Connection, SessionStateStore, Updated};
use proptest::prelude::*;

async fn store() -> SessionStateStore {
    let conn = Connection::connect(&TestEnv::from_env().valkey_url)
        .await
        .expect("connect");
    SessionStateStore::new(conn)
}

fn session() -> SessionKey {
    format!("{}:planner:s1", unique("st"))
        .parse()
        .expect("session")
}

fn update(json: &str) -> StateUpdate {
    let update: StateUpdate = serde_json::from_str(json).expect("update");
    update.validate().expect("valid");
    update
}

fn applied(outcome: Updated) -> agentwire_protocol::session_state::SessionState {
    match outcome {
        Updated::Applied(state) => state,
        other => panic!("not applied: {other:?}"),
    }
}

#[tokio::test]
async fn updates_are_whole_compare_and_set_and_keep_field_bytes() {
    let store = store().await;
    let s = session();
    assert_eq!(store.get(&s).await.expect("get").version, 0);
    let first = applied(
        store
            .update(
                &s,
                &update(r#"{"status":"running","fields":{"plan":{"b":1.50,"a":[1,2]}},"limits":{"tokens":100}}"#),
            )
            .await
            .expect("update"),
    );
    assert_eq!(first.version, 1);
    assert_eq!(first.status, Some(RunStatus::Running));
    assert_eq!(
        first.fields["plan"].get(),
        r#"{"b":1.50,"a":[1,2]}"#,
        "the exact bytes"
    );
    assert_eq!(first.counters["tokens"].limit, Some(100));
    assert_eq!(first.counters["tokens"].used, 0);

    // A stale version is refused and changes nothing.
    match store
        .update(&s, &update(r#"{"expect_version":0,"status":"failed"}"#))
        .await
        .expect("update")
    {
        Updated::Conflict(version) => assert_eq!(version, 1),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Over the budget: refused whole (the field set alongside is not written either).
    match store
        .update(
            &s,
            &update(r#"{"consume":{"tokens":101},"fields":{"x":1}}"#),
        )
        .await
        .expect("update")
    {
        Updated::OverBudget {
            counter,
            used,
            limit,
        } => {
            assert_eq!((counter.as_str(), used, limit), ("tokens", 0, 100));
        }
        other => panic!("expected over budget, got {other:?}"),
    }
    let now = store.get(&s).await.expect("get");
    assert_eq!(now.version, 1);
    assert!(!now.fields.contains_key("x"));

    let second = applied(
        store
            .update(
                &s,
                &update(r#"{"expect_version":1,"status":"waiting","consume":{"tokens":60,"calls":1},"fields":{"plan":null}}"#),
            )
            .await
            .expect("update"),
    );
    assert_eq!(second.version, 2);
    assert_eq!(second.counters["tokens"].used, 60);
    assert_eq!(second.counters["calls"].used, 1);
    assert_eq!(second.counters["calls"].limit, None, "no limit: unlimited");
    assert!(second.fields.is_empty(), "null removed the field");

    // Restores: an older state is ignored, a newer one replaces Valkey's.
    assert!(!store.restore(&first).await.expect("restore"));
    let mut newer = second.clone();
    newer.version = 7;
    newer.status = Some(RunStatus::Completed);
    assert!(store.restore(&newer).await.expect("restore"));
    let back = store.get(&s).await.expect("get");
    assert_eq!((back.version, back.status), (7, Some(RunStatus::Completed)));
    assert_eq!(back.counters, second.counters);
}

#[tokio::test]
async fn the_state_refuses_more_fields_than_its_limit_without_writing_any() {
    let store = store().await;
    let s = session();
    let many: serde_json::Map<String, serde_json::Value> = (0
        ..agentwire_protocol::session_state::MAX_FIELDS)
        .map(|i| (format!("f{i}"), serde_json::json!(i)))
        .collect();
    let fill = update(&serde_json::json!({ "fields": many }).to_string());
    applied(store.update(&s, &fill).await.expect("fill"));
    match store
        .update(
            &s,
            &update(r#"{"fields":{"one_more":1},"status":"running"}"#),
        )
        .await
        .expect("update")
    {
        Updated::TooMany(what) => assert_eq!(what, "fields"),
        other => panic!("expected too many, got {other:?}"),
    }
    let state = store.get(&s).await.expect("get");
    assert_eq!((state.version, state.status), (1, None));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// 50 clients consume random amounts concurrently; the sum granted never passes the
    /// limit, and every refusal was one that would have passed it.
    #[test]
    fn fifty_concurrent_consumers_never_overspend(
        limit in 50u64..500,
        amounts in proptest::collection::vec(1u64..20, 50),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let store = Arc::new(store().await);
            let s = session();
            applied(store.update(&s, &update(&format!(r#"{{"limits":{{"budget":{limit}}}}}"#))).await.expect("limit"));
            let granted = futures::future::join_all(amounts.iter().map(|&n| {
                let (store, s) = (store.clone(), s.clone());
                async move {
                    let consume = update(&format!(r#"{{"consume":{{"budget":{n}}}}}"#));
                    match store.update(&s, &consume).await.expect("consume") {
                        Updated::Applied(_) => Some(n),
                        Updated::OverBudget { used, limit, .. } => {
                            assert!(used + n > limit, "refused although it fit");
                            None
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }))
            .await;
            let total: u64 = granted.iter().flatten().sum();
            let state = store.get(&s).await.expect("get");
            assert_eq!(state.counters["budget"].used, total);
            assert!(total <= limit, "overspent: {total} > {limit}");
        });
    }
}
