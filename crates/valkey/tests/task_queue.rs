//! `lua/tasks.lua` on a real Valkey: priorities, delayed retries with backoff, dead letters
//! after `max_attempts`, stale leases refused, idempotent retries of lease ops, replays of
//! records, and (property test) no task ever held by two live leases over random
//! interleavings of claims, expiries, completions, failures and releases.

use std::collections::HashMap;
use std::time::Duration;

use agentwire_protocol::{
    Capability, TaskDoc, TaskEventKind, TaskRecord, TaskSpec, TaskState, Tenant,
};
use agentwire_test_support::{TestEnv, unique};
use agentwire_valkey::{Applied, Connection, Enqueued, LeaseOutcome, TaskStore, Transition};
use proptest::prelude::*;
use uuid::Uuid;

async fn store() -> TaskStore {
    let conn = Connection::connect(&TestEnv::from_env().valkey_url)
        .await
        .expect("connect");
    TaskStore::new(conn, Duration::from_secs(600), "agent.tasks")
}

fn task(tenant: &Tenant, cap: &str, extra: &str) -> TaskDoc {
    let json =
        format!(r#"{{"tenant":"{tenant}","capability":"{cap}","payload":{{"n":1}}{extra}}}"#);
    let spec: TaskSpec = serde_json::from_str(&json).expect("spec");
    TaskDoc::from_spec(spec, agentwire_protocol::task::now_ms()).expect("valid")
}

async fn enqueue(store: &TaskStore, doc: &TaskDoc) -> Transition {
    match store.enqueue(doc).await.expect("enqueue") {
        Enqueued::New(t) => t,
        other => panic!("not new: {other:?}"),
    }
}

fn cap(name: &str) -> Capability {
    Capability::new(name).expect("capability")
}

fn tenant() -> Tenant {
    Tenant::new(unique("tq")).expect("tenant")
}

#[tokio::test]
async fn higher_priority_first_then_oldest() {
    let store = store().await;
    let t = tenant();
    let low = task(&t, "search", r#","priority":1"#);
    let high = task(&t, "search", r#","priority":7"#);
    let low2 = task(&t, "search", r#","priority":1"#);
    for doc in [&low, &high, &low2] {
        enqueue(&store, doc).await;
    }
    let claim = store
        .claim(&t, &[cap("search")], 3, Duration::from_secs(30), "w")
        .await
        .expect("claim");
    let order: Vec<Uuid> = claim.tasks.iter().map(|c| c.doc.id).collect();
    assert_eq!(order, vec![high.id, low.id, low2.id]);
    assert_eq!(claim.transitions.len(), 3);
    assert!(
        claim
            .transitions
            .iter()
            .all(|t| t.kind == TaskEventKind::Claimed && t.status.attempt == 1)
    );
}

#[tokio::test]
async fn a_retry_waits_for_its_backoff_and_the_last_failure_dead_letters() {
    let store = store().await;
    let t = tenant();
    let doc = task(
        &t,
        "flaky",
        r#","max_attempts":2,"retry":{"initial_ms":300,"max_ms":300,"jitter":0}"#,
    );
    enqueue(&store, &doc).await;
    let caps = [cap("flaky")];
    let first = store
        .claim(&t, &caps, 1, Duration::from_secs(30), "w")
        .await
        .expect("claim");
    let lease = first.tasks[0].status.lease_id.clone().expect("lease");
    let LeaseOutcome::Done(out) = store
        .fail(&t, doc.id, &lease, "boom", true, 0.5)
        .await
        .expect("fail")
    else {
        panic!("fail refused");
    };
    assert_eq!(out[0].kind, TaskEventKind::RetryScheduled);
    let failed_at = out[0].status.updated_at_ms;
    let not_before = out[0].status.not_before_ms.expect("not before");
    assert_eq!(not_before, failed_at + 300, "no jitter: the full backoff");
    // A retried fail with the same lease changes nothing.
    assert!(matches!(
        store
            .fail(&t, doc.id, &lease, "boom", true, 0.5)
            .await
            .expect("retry"),
        LeaseOutcome::Already(_)
    ));
    // Until not_before, claims find nothing; after it, the task (attempt 2).
    let second = agentwire_test_support::wait_until(
        Duration::from_secs(10),
        "the retry to become ready",
        || async {
            let claim = store
                .claim(&t, &caps, 1, Duration::from_secs(30), "w")
                .await
                .expect("claim");
            claim.tasks.into_iter().next()
        },
    )
    .await;
    assert!(
        second.status.updated_at_ms >= not_before,
        "claimed before its backoff"
    );
    assert_eq!(second.status.attempt, 2);
    let lease = second.status.lease_id.expect("lease");
    let LeaseOutcome::Done(out) = store
        .fail(&t, doc.id, &lease, "boom again", true, 0.0)
        .await
        .expect("fail")
    else {
        panic!("refused");
    };
    assert_eq!(out[0].kind, TaskEventKind::DeadLettered);
    assert_eq!(out[0].status.dead_reason.as_deref(), Some("attempts"));
    let dead = store
        .dead_letters(&t, &cap("flaky"), 0, 10)
        .await
        .expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].status.last_error.as_deref(), Some("boom again"));
    let (out, refused) = store
        .settle_dead(&t, &cap("flaky"), &[doc.id], false)
        .await
        .expect("requeue");
    assert!(refused.is_empty());
    assert_eq!(out[0].kind, TaskEventKind::Requeued);
    assert_eq!(out[0].status.state, TaskState::Ready);
    assert_eq!(out[0].status.attempt, 0);
}

#[tokio::test]
async fn stale_leases_are_refused_and_lease_ops_are_idempotent() {
    let store = store().await;
    let t = tenant();
    let doc = task(&t, "x", "");
    enqueue(&store, &doc).await;
    let claim = store
        .claim(&t, &[cap("x")], 1, Duration::from_secs(30), "w")
        .await
        .expect("claim");
    let lease = claim.tasks[0].status.lease_id.clone().expect("lease");
    assert_eq!(
        store
            .complete(&t, doc.id, "not-the-lease", None)
            .await
            .expect("complete"),
        LeaseOutcome::Stale(TaskState::Claimed)
    );
    let result = serde_json::value::RawValue::from_string(r#"{"ok":true}"#.into()).expect("raw");
    let LeaseOutcome::Done(out) = store
        .complete(&t, doc.id, &lease, Some(&result))
        .await
        .expect("complete")
    else {
        panic!("refused");
    };
    assert_eq!(out[0].kind, TaskEventKind::Completed);
    assert!(matches!(
        store
            .complete(&t, doc.id, &lease, Some(&result))
            .await
            .expect("again"),
        LeaseOutcome::Already(_)
    ));
    assert_eq!(
        store.release(&t, doc.id, &lease).await.expect("release"),
        LeaseOutcome::Stale(TaskState::Completed)
    );
    let view = store.get(&t, doc.id).await.expect("get").expect("known");
    assert_eq!(view.status.state, TaskState::Completed);
    assert_eq!(
        view.status.result.map(|r| r.get().to_owned()).as_deref(),
        Some(r#"{"ok":true}"#)
    );
    assert_eq!(
        store.cancel(&t, doc.id).await.expect("cancel"),
        LeaseOutcome::WrongState(TaskState::Completed)
    );
}

#[tokio::test]
async fn an_idempotency_key_names_its_first_task() {
    let store = store().await;
    let t = tenant();
    let first = task(&t, "x", r#","idempotency_key":"order-42""#);
    let again = task(&t, "x", r#","idempotency_key":"order-42""#);
    let owner = store
        .reserve_idempotency(&t, "order-42", first.id, Duration::from_secs(60))
        .await
        .expect("reserve");
    assert_eq!(owner, first.id);
    enqueue(&store, &first).await;
    let owner = store
        .reserve_idempotency(&t, "order-42", again.id, Duration::from_secs(60))
        .await
        .expect("reserve");
    assert_eq!(owner, first.id);
    assert_eq!(
        store.enqueue(&again).await.expect("enqueue"),
        Enqueued::Duplicate(first.id)
    );
}

#[tokio::test]
async fn replayed_records_rebuild_a_wiped_queue_keeping_only_newer_versions() {
    let store = store().await;
    let t = tenant();
    let done = task(&t, "x", "");
    let pending = task(&t, "x", "");
    let mut records = Vec::new();
    for doc in [&done, &pending] {
        let tr = enqueue(&store, doc).await;
        records.push(TaskRecord {
            kind: tr.kind,
            tenant: t.clone(),
            id: tr.id,
            doc: Some(doc.clone()),
            status: tr.status,
        });
    }
    let claim = store
        .claim(&t, &[cap("x")], 2, Duration::from_secs(30), "w")
        .await
        .expect("claim");
    for tr in &claim.transitions {
        records.push(TaskRecord {
            kind: tr.kind,
            tenant: t.clone(),
            id: tr.id,
            doc: None,
            status: tr.status.clone(),
        });
    }
    let lease = claim
        .tasks
        .iter()
        .find(|c| c.doc.id == done.id)
        .and_then(|c| c.status.lease_id.clone())
        .expect("lease");
    let LeaseOutcome::Done(out) = store
        .complete(&t, done.id, &lease, None)
        .await
        .expect("done")
    else {
        panic!("refused");
    };
    records.extend(out.into_iter().map(|tr| TaskRecord {
        kind: tr.kind,
        tenant: t.clone(),
        id: tr.id,
        doc: None,
        status: tr.status,
    }));
    // Everything Valkey had is stale already.
    for record in &records {
        assert_eq!(
            store.apply(record, true).await.expect("apply"),
            Applied::Stale
        );
    }
    // Wipe the tenant's keys, then replay the records newest first (order does not matter:
    // the newest version wins), then again (nothing changes).
    wipe(&t).await;
    let mut reversed = records.clone();
    reversed.reverse();
    for record in &reversed {
        store.apply(record, true).await.expect("apply");
    }
    for record in &records {
        store.apply(record, true).await.expect("apply");
    }
    let done_view = store.get(&t, done.id).await.expect("get").expect("known");
    assert_eq!(done_view.status.state, TaskState::Completed);
    let pending_view = store
        .get(&t, pending.id)
        .await
        .expect("get")
        .expect("known");
    assert_eq!(pending_view.status.state, TaskState::Claimed);
    let stats = store.stats(&t, &[cap("x")]).await.expect("stats");
    assert_eq!((stats[0].ready, stats[0].in_flight), (0, 1));
}

async fn wipe(tenant: &Tenant) {
    let client = redis::Client::open(TestEnv::from_env().valkey_url.as_str()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("aw:tq:{{{tenant}}}:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}

/// One step of the property test: worker `w` acts on its `i`-th held lease (modulo).
#[derive(Clone, Debug)]
enum Step {
    Claim {
        w: usize,
        n: usize,
        lease_ms: u64,
    },
    Complete {
        w: usize,
        i: usize,
    },
    Fail {
        w: usize,
        i: usize,
        retryable: bool,
    },
    Release {
        w: usize,
        i: usize,
    },
    Heartbeat {
        w: usize,
        i: usize,
    },
    /// Acts on a lease the worker held before (possibly stale).
    CompleteOld {
        w: usize,
        i: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let w = 0..3usize;
    prop_oneof![
        3 => (w.clone(), 1..4usize, prop_oneof![Just(1u64), Just(3), Just(60_000)])
            .prop_map(|(w, n, lease_ms)| Step::Claim { w, n, lease_ms }),
        2 => (w.clone(), 0..4usize).prop_map(|(w, i)| Step::Complete { w, i }),
        1 => (w.clone(), 0..4usize, any::<bool>()).prop_map(|(w, i, retryable)| Step::Fail { w, i, retryable }),
        1 => (w.clone(), 0..4usize).prop_map(|(w, i)| Step::Release { w, i }),
        1 => (w.clone(), 0..4usize).prop_map(|(w, i)| Step::Heartbeat { w, i }),
        1 => (w, 0..8usize).prop_map(|(w, i)| Step::CompleteOld { w, i }),
    ]
}

/// A lease as the test saw it granted.
#[derive(Clone, Debug)]
struct Held {
    task: Uuid,
    lease: String,
    /// Valkey's time at the grant and the expiry it gave (heartbeats move it).
    expires: u64,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// No claim hands out a task while another lease on it is live (granted, not expired by
    /// Valkey's clock, not ended by an accepted complete/fail/release); a completed task is
    /// never handed out again; ops with a lease that is not current are refused.
    #[test]
    fn no_task_is_ever_held_by_two_live_leases(steps in proptest::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let store = store().await;
            let t = tenant();
            let caps = [cap("p")];
            for _ in 0..4 {
                enqueue(&store, &task(&t, "p", r#","max_attempts":3,"retry":{"initial_ms":1,"max_ms":2}"#)).await;
            }
            let mut held: Vec<Vec<Held>> = vec![Vec::new(); 3];
            let mut old: Vec<Vec<Held>> = vec![Vec::new(); 3];
            // The live lease per task: (lease, expiry), removed when ended.
            let mut live: HashMap<Uuid, (String, u64)> = HashMap::new();
            let mut completed: std::collections::HashSet<Uuid> = Default::default();
            for step in steps {
                match step {
                    Step::Claim { w, n, lease_ms } => {
                        let claim = store
                            .claim(&t, &caps, n, Duration::from_millis(lease_ms), &format!("w{w}"))
                            .await
                            .expect("claim");
                        for tr in &claim.transitions {
                            if matches!(tr.kind, TaskEventKind::LeaseExpired | TaskEventKind::DeadLettered) {
                                if let Some((_, exp)) = live.get(&tr.id) {
                                    assert!(tr.status.updated_at_ms >= *exp, "a live lease was expired early");
                                }
                                live.remove(&tr.id);
                            }
                        }
                        for c in claim.tasks {
                            let now = c.status.updated_at_ms;
                            assert!(!completed.contains(&c.doc.id), "a completed task was handed out again");
                            if let Some((_, exp)) = live.get(&c.doc.id) {
                                assert!(now >= *exp, "task {} handed out while a lease on it was live", c.doc.id);
                            }
                            let lease = c.status.lease_id.clone().expect("lease");
                            let expires = c.status.lease_expires_at_ms.expect("expiry");
                            live.insert(c.doc.id, (lease.clone(), expires));
                            held[w].push(Held { task: c.doc.id, lease, expires });
                        }
                    }
                    Step::Complete { w, i } | Step::Fail { w, i, .. } | Step::Release { w, i } | Step::Heartbeat { w, i } if held[w].is_empty() => {
                        let _ = i;
                    }
                    Step::Complete { w, i } => {
                        let idx = i % held[w].len();
                        let h = held[w].remove(idx);
                        let outcome = store.complete(&t, h.task, &h.lease, None).await.expect("complete");
                        let current = live.get(&h.task).is_some_and(|(l, _)| *l == h.lease);
                        match outcome {
                            LeaseOutcome::Done(_) => {
                                assert!(current, "a complete with an ended lease was accepted");
                                live.remove(&h.task);
                                completed.insert(h.task);
                            }
                            LeaseOutcome::Stale(_) => assert!(!current, "the current lease was refused"),
                            other => panic!("complete answered {other:?}"),
                        }
                        old[w].push(h);
                    }
                    Step::Fail { w, i, retryable } => {
                        let idx = i % held[w].len();
                        let h = held[w].remove(idx);
                        let outcome = store.fail(&t, h.task, &h.lease, "x", retryable, 0.5).await.expect("fail");
                        let current = live.get(&h.task).is_some_and(|(l, _)| *l == h.lease);
                        if let LeaseOutcome::Done(_) = outcome {
                            assert!(current, "a fail with an ended lease was accepted");
                            live.remove(&h.task);
                        }
                        old[w].push(h);
                    }
                    Step::Release { w, i } => {
                        let idx = i % held[w].len();
                        let h = held[w].remove(idx);
                        let outcome = store.release(&t, h.task, &h.lease).await.expect("release");
                        let current = live.get(&h.task).is_some_and(|(l, _)| *l == h.lease);
                        if let LeaseOutcome::Done(_) = outcome {
                            assert!(current, "a release with an ended lease was accepted");
                            live.remove(&h.task);
                        }
                        old[w].push(h);
                    }
                    Step::Heartbeat { w, i } => {
                        let idx = i % held[w].len();
                        let h = &mut held[w][idx];
                        if let Ok(expires) = store
                            .heartbeat(&t, h.task, &h.lease, Duration::from_millis(60_000))
                            .await
                            .expect("heartbeat")
                        {
                            let current = live.get(&h.task).is_some_and(|(l, _)| *l == h.lease);
                            assert!(current, "a heartbeat of an ended lease was accepted");
                            h.expires = expires;
                            live.insert(h.task, (h.lease.clone(), expires));
                        }
                    }
                    Step::CompleteOld { w, i } => {
                        if old[w].is_empty() {
                            continue;
                        }
                        let h = old[w][i % old[w].len()].clone();
                        let outcome = store.complete(&t, h.task, &h.lease, None).await.expect("complete");
                        if let LeaseOutcome::Done(_) = outcome {
                            panic!("an ended lease completed its task");
                        }
                    }
                }
            }
        });
    }
}
