//! The broker killed: publishes fail fast with 503 and write nothing; after a restart (same
//! SQLite storage) publishing resumes and every acknowledged event is still in the log.

mod common;

use std::time::Duration;

use agentwire_client::ClientError;
use agentwire_protocol::ErrorCode;
use agentwire_test_support::wait_until;
use common::{Stack, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_fail_with_503_while_the_broker_is_down_and_acked_events_survive() {
    let (stack, mut broker) = Stack::on_own_broker(1, |_| {}).await;
    let session = stack.session("down");
    // Longer than the gateway's delivery timeout, so the gateway's own answer arrives.
    let http = agentwire_client::HttpClient::with_timeout(&stack.http_url, Duration::from_secs(30))
        .expect("client");
    let before = http
        .publish(&event(&session, "p", 1, "before"))
        .await
        .expect("publish while up");

    broker.kill();
    let err = http
        .publish(&event(&session, "p", 2, "during"))
        .await
        .expect_err("publish while down");
    match &err {
        ClientError::Http { status, code, .. } => assert_eq!(
            (*status, *code),
            (503, Some(ErrorCode::Unavailable)),
            "{err}"
        ),
        other => panic!("expected a 503, got {other}"),
    }

    broker.restart().await;
    let after = wait_until(
        Duration::from_secs(45),
        "a publish to succeed after the restart",
        || {
            let (http, event) = (http.clone(), event(&session, "p", 3, "after"));
            async move { http.publish(&event).await }
        },
    )
    .await;

    let log = stack.log_by_key(1).await;
    let texts: Vec<(u64, String)> = log[&session.to_string()]
        .iter()
        .map(|m| {
            let json = std::str::from_utf8(m.value.as_deref().unwrap_or_default())
                .expect("utf-8")
                .to_owned();
            let e = agentwire_protocol::cloudevents::from_json(&json).expect("event");
            (m.offset.0, e.text.unwrap_or_default())
        })
        .collect();
    assert!(
        texts.contains(&(before.offset.0, "before".to_owned())),
        "{texts:?}"
    );
    assert!(
        texts.contains(&(after.offset.0, "after".to_owned())),
        "{texts:?}"
    );
    assert!(
        !texts.iter().any(|(_, t)| t == "during"),
        "a publish answered 503 was written: {texts:?}"
    );
}
