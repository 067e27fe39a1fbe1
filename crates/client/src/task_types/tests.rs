use agentwire_protocol::{TaskDoc, TaskSpec};

use super::*;

fn names() -> (Tenant, Capability) {
    (
        Tenant::new("acme").expect("valid"),
        Capability::new("search").expect("valid"),
    )
}

#[test]
fn a_new_task_is_a_spec_the_server_accepts() {
    let (tenant, capability) = names();
    let session: SessionKey = "acme:planner:s1".parse().expect("session");
    let task = NewTask::new(tenant, capability)
        .payload(serde_json::json!({"q": "rust"}))
        .priority(3)
        .idempotency_key("k1")
        .delay(Duration::from_millis(250))
        .max_attempts(4)
        .retry(RetryPolicy::default())
        .deadline_ms(9_000_000)
        .correlation_id("c")
        .causation_id("e")
        .session(session.clone())
        .reply_to(session);
    let json = serde_json::to_string(&task).expect("json");
    let spec: TaskSpec = serde_json::from_str(&json).expect("a TaskSpec");
    let doc = TaskDoc::from_spec(spec, 1_000).expect("valid");
    assert_eq!((doc.priority, doc.max_attempts), (3, 4));
    assert_eq!(doc.not_before_ms, Some(1_250));
    assert_eq!(
        doc.payload.map(|p| p.get().to_owned()),
        Some(r#"{"q":"rust"}"#.into())
    );
    let (tenant, capability) = names();
    let bare = serde_json::to_string(&NewTask::new(tenant, capability)).expect("json");
    assert_eq!(bare, r#"{"tenant":"acme","capability":"search"}"#);
}

#[test]
fn binary_payloads_travel_as_base64() {
    let (tenant, capability) = names();
    let task = NewTask::new(tenant, capability)
        .payload(serde_json::json!(1))
        .payload_bytes("application/octet-stream", &[0, 1, 2]);
    let json = serde_json::to_string(&task).expect("json");
    let spec: TaskSpec = serde_json::from_str(&json).expect("a TaskSpec");
    let doc = TaskDoc::from_spec(spec, 1_000).expect("valid");
    assert_eq!(doc.payload_base64.as_deref(), Some("AAEC"));
    assert!(doc.payload.is_none());
}

#[test]
fn task_views_are_read_leniently() {
    let json = r#"{"id":"0190b6f2-8a1e-7cc0-9b8e-4b0a8f8f8f8f","tenant":"acme",
        "capability":"search","priority":2,"content_type":"application/octet-stream",
        "payload_base64":"AAEC","max_attempts":5,"retry":{"initial_ms":1},"state":"claimed",
        "version":3,"attempt":5,"lease_id":"L1","lease_expires_at_ms":77,"enqueued_at_ms":1,
        "updated_at_ms":2,"something_new":{"x":1}}"#;
    let task: Task = serde_json::from_str(json).expect("task");
    assert_eq!(task.state, TaskState::Claimed);
    assert_eq!(task.lease_id.as_deref(), Some("L1"));
    assert_eq!(task.payload_bytes().expect("base64"), Some(vec![0, 1, 2]));
    assert!(task.is_last_attempt());
    let ack: EnqueueAck =
        serde_json::from_str(r#"{"id":"x","state":"ready","partition":1,"offset":9}"#)
            .expect("ack");
    assert!(!ack.duplicate);
    let done: Transition = serde_json::from_str(
        r#"{"task_id":"x","state":"delayed","version":4,"attempt":1,"not_before_ms":5}"#,
    )
    .expect("transition");
    assert_eq!(done.not_before_ms, Some(5));
}

#[test]
fn error_texts_fit_the_server_limit() {
    assert_eq!(error_text(""), "failed");
    assert_eq!(error_text("boom"), "boom");
    let long = "é".repeat(MAX_TEXT_LEN);
    let cut = error_text(&long);
    assert!(cut.len() <= MAX_TEXT_LEN && cut.len() >= MAX_TEXT_LEN - 1);
    assert!(cut.chars().all(|c| c == 'é'));
}
