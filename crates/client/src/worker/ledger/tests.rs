use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::{Capability, ErrorCode, ErrorFrame, Tenant};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Answer, Ledger};
use crate::task_types::Task;
use crate::worker::frames::Settle;
use crate::worker::{Settings, WorkerStats};

const LEASE: Duration = Duration::from_secs(30);

fn ledger(prefetch: usize) -> (Ledger, Arc<WorkerStats>) {
    let settings = Settings {
        url: "ws://127.0.0.1:1/v1/ws".into(),
        tenant: Tenant::new("acme").expect("valid"),
        capabilities: vec![Capability::new("search").expect("valid")],
        prefetch,
        lease: LEASE,
        name: Some("w".into()),
        token: None,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        request_timeout: Duration::from_secs(1),
        keepalive: Duration::from_secs(15),
        refresh_margin: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
        agent_id: None,
    };
    let stats = Arc::new(WorkerStats::default());
    let mut ledger = Ledger::new(Arc::new(settings), stats.clone());
    ledger.connected();
    (ledger, stats)
}

fn task(n: u32) -> Task {
    serde_json::from_value(json!({
        "id": format!("task-{n}"), "tenant": "acme", "capability": "search",
        "state": "claimed", "attempt": 1, "max_attempts": 5, "lease_id": format!("L{n}"),
    }))
    .expect("task")
}

/// The outbox as (op, request id, lease id), emptied.
fn sent(ledger: &mut Ledger) -> Vec<(String, String, String)> {
    std::mem::take(&mut ledger.outbox)
        .iter()
        .map(|frame| {
            let v: Value = serde_json::from_str(frame).expect("json");
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (text("op"), text("id"), text("lease_id"))
        })
        .collect()
}

fn error(id: &str, code: ErrorCode) -> ErrorFrame {
    ErrorFrame {
        code,
        message: "refused".into(),
        field: None,
        session: None,
        id: Some(id.into()),
        retry_after_ms: None,
        expected_seq: None,
    }
}

#[test]
fn consume_is_sent_and_its_answer_recognised() {
    let (mut ledger, _) = ledger(2);
    let out = sent(&mut ledger);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "consume");
    assert_eq!(
        ledger.on_ack(Some(&out[0].1), &json!({})),
        Answer::ConsumeAccepted
    );
    ledger.connection_lost();
    ledger.connected();
    let again = sent(&mut ledger);
    let refused = ledger.on_error(error(&again[0].1, ErrorCode::Forbidden), Instant::now());
    assert!(matches!(refused, Answer::ConsumeRefused(f) if f.code == ErrorCode::Forbidden));
}

#[test]
fn at_most_prefetch_handlers_run_and_queued_tasks_follow() {
    let (mut ledger, stats) = ledger(2);
    sent(&mut ledger);
    let now = Instant::now();
    assert!(ledger.accept(task(1), now).is_some());
    assert!(ledger.accept(task(2), now).is_some());
    assert!(ledger.accept(task(3), now).is_none(), "queued");
    assert!(ledger.accept(task(3), now).is_none(), "a repeat is ignored");
    assert_eq!(stats.received(), 3);

    let next = ledger.finished("L1", Settle::Complete(Some(json!({"ok": true}))));
    assert_eq!(next.map(|t| t.id), Some("task-3".to_owned()));
    let out = sent(&mut ledger);
    assert_eq!((out[0].0.as_str(), out[0].2.as_str()), ("complete", "L1"));
    ledger.on_ack(Some(&out[0].1), &json!({"state": "completed"}));
    assert_eq!(stats.completed(), 1);

    ledger.finished(
        "L2",
        Settle::Fail {
            error: "x".into(),
            retryable: true,
        },
    );
    let out = sent(&mut ledger);
    ledger.on_error(error(&out[0].1, ErrorCode::StaleLease), now);
    assert_eq!((stats.failed(), stats.stale()), (0, 1));
    ledger.finished("L3", Settle::Release);
    let out = sent(&mut ledger);
    ledger.on_ack(Some(&out[0].1), &json!({}));
    assert_eq!(stats.released(), 1);
    assert!(ledger.is_empty());
}

#[test]
fn leases_are_kept_alive_every_third_of_the_lease() {
    let (mut ledger, stats) = ledger(1);
    sent(&mut ledger);
    let start = Instant::now();
    ledger.accept(task(1), start);
    ledger.accept(task(2), start);
    assert_eq!(ledger.next_deadline(), Some(start + LEASE / 3));
    ledger.due(start + LEASE / 6);
    assert!(sent(&mut ledger).is_empty(), "not due yet");
    let at = start + LEASE / 3;
    ledger.due(at);
    let beats = sent(&mut ledger);
    assert_eq!(beats.len(), 2);
    assert!(beats.iter().all(|b| b.0 == "heartbeat"));
    ledger.due(at + LEASE);
    assert!(
        sent(&mut ledger).is_empty(),
        "one heartbeat at a time per task"
    );
    for (_, id, lease) in &beats {
        if lease == "L2" {
            // The queued task's lease is gone: release it so its credit comes back.
            ledger.on_error(error(id, ErrorCode::StaleLease), at);
        } else {
            ledger.on_ack(Some(id), &json!({"lease_expires_at_ms": 1}));
        }
    }
    let out = sent(&mut ledger);
    assert_eq!((out[0].0.as_str(), out[0].2.as_str()), ("release", "L2"));
    assert_eq!(stats.stale(), 1);
    assert_eq!(ledger.next_deadline(), Some(at + LEASE / 3));
    assert!(
        ledger.finished("L1", Settle::Complete(None)).is_none(),
        "L2 is no longer queued"
    );
}

#[test]
fn a_lost_connection_drops_queued_tasks_and_resends_settles() {
    let (mut ledger, _) = ledger(1);
    sent(&mut ledger);
    let now = Instant::now();
    ledger.accept(task(1), now);
    ledger.accept(task(2), now);
    ledger.connection_lost();
    // L2 went with the connection (the gateway released it); L1's handler goes on.
    assert!(
        ledger.finished("L1", Settle::Complete(None)).is_none(),
        "L2 was dropped"
    );
    assert!(sent(&mut ledger).is_empty(), "nothing is sent offline");
    ledger.connected();
    let out = sent(&mut ledger);
    let ops: Vec<(&str, &str)> = out.iter().map(|o| (o.0.as_str(), o.2.as_str())).collect();
    assert_eq!(ops, [("consume", ""), ("complete", "L1")]);
    ledger.finished("L9", Settle::Release);
    assert!(
        sent(&mut ledger).is_empty(),
        "an unknown lease settles nothing"
    );
    ledger.connection_lost();
    ledger.connected();
    let again = sent(&mut ledger);
    assert_eq!(again[1].2, "L1", "an unanswered settle goes again");
    assert_ne!(again[1].1, out[1].1, "under a new request id");
    assert_eq!(
        ledger.on_ack(Some(&out[1].1), &json!({})),
        Answer::Nothing,
        "old answers are ignored"
    );
    assert!(!ledger.is_empty());
}

#[test]
fn refused_settles_are_retried_or_downgraded() {
    let (mut ledger, stats) = ledger(2);
    sent(&mut ledger);
    let now = Instant::now();
    ledger.accept(task(1), now);
    ledger.finished("L1", Settle::Complete(Some(json!("huge"))));
    let out = sent(&mut ledger);
    let mut busy = error(&out[0].1, ErrorCode::Unavailable);
    busy.retry_after_ms = Some(50);
    ledger.on_error(busy, now);
    assert_eq!(
        ledger.next_deadline(),
        Some(now + Duration::from_millis(50))
    );
    ledger.due(now + Duration::from_millis(50));
    let out = sent(&mut ledger);
    assert_eq!((out[0].0.as_str(), out[0].2.as_str()), ("complete", "L1"));
    ledger.on_error(error(&out[0].1, ErrorCode::PayloadTooLarge), now);
    let out = sent(&mut ledger);
    assert_eq!(out[0].0, "fail", "a refused result fails the task");
    ledger.on_error(error(&out[0].1, ErrorCode::InvalidField), now);
    let out = sent(&mut ledger);
    assert_eq!(out[0].0, "release", "a refused failure releases it");
    ledger.on_error(error(&out[0].1, ErrorCode::InvalidField), now);
    assert!(ledger.is_empty());
    assert_eq!(stats.errors(), 3);
}

#[test]
fn draining_stops_consuming_and_releases_what_waits() {
    let (mut ledger, _) = ledger(1);
    sent(&mut ledger);
    let now = Instant::now();
    ledger.accept(task(1), now);
    ledger.accept(task(2), now);
    ledger.drain();
    let ops: Vec<(String, String)> = sent(&mut ledger).into_iter().map(|o| (o.0, o.2)).collect();
    assert_eq!(
        ops,
        [
            ("stop_consuming".into(), String::new()),
            ("release".into(), "L2".into())
        ]
    );
    assert!(ledger.accept(task(3), now).is_none());
    assert_eq!(sent(&mut ledger)[0].0, "release");
    assert!(ledger.finished("L1", Settle::Complete(None)).is_none());
    assert_eq!(sent(&mut ledger)[0].0, "complete");
}
