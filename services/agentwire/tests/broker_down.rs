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

/// A frozen broker (SIGSTOP: connections stay open, nothing is answered) under 64 concurrent
/// publishes: each is answered 503 with a `Retry-After` within the delivery timeout instead of
/// piling up, the producer is not replaced (librdkafka bumps its epoch and keeps one ordered
/// stream), and publishing recovers on its own when the broker does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_gets_quick_503s_with_retry_after_keeps_its_producer_and_recovers() {
    const PUBLISHES: usize = 64;
    let (stack, mut broker) = Stack::on_own_broker(1, |_| {}).await;
    let sessions: Vec<_> = (0..8).map(|i| stack.session(&format!("f{i}"))).collect();
    let http = agentwire_client::HttpClient::with_timeout(&stack.http_url, Duration::from_secs(30))
        .expect("client");
    http.publish(&event(&sessions[0], "p", 1, "before"))
        .await
        .expect("publish while the broker answers");
    let replaced_before = replacements(&stack).await;

    broker.pause();
    let frozen = std::time::Instant::now();
    let client = reqwest::Client::new();
    let answers = futures::future::join_all((0..PUBLISHES).map(|i| {
        let (client, url) = (client.clone(), format!("{}/v1/events", stack.http_url));
        let body = agentwire_protocol::cloudevents::to_json(&event(
            &sessions[i % sessions.len()],
            "p",
            i as u64 + 2,
            "frozen",
        ));
        async move {
            let response = client
                .post(url)
                .header("content-type", "application/cloudevents+json")
                .body(body)
                .send()
                .await
                .expect("an answer, not a dropped request");
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("json error body");
            (status, retry_after, body, frozen.elapsed())
        }
    }))
    .await;
    let slowest = answers.iter().map(|(.., t)| *t).max().unwrap_or_default();
    for (status, retry_after, body, _) in &answers {
        assert_eq!(*status, 503, "a frozen broker's publish: {body}");
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "unavailable" || code == "outcome_unknown",
            "the code says what happened: {body}"
        );
        assert_eq!(retry_after.as_deref(), Some("1"), "Retry-After: {body}");
        assert_eq!(body["error"]["retry_after_ms"], 1000, "{body}");
    }
    println!(
        "{PUBLISHES} publishes to a frozen broker all answered 503 within {:.2} s",
        slowest.as_secs_f64()
    );

    broker.resume();
    let resumed = std::time::Instant::now();
    let recovered = wait_until(
        Duration::from_secs(60),
        "a publish to succeed again",
        || {
            let (http, event) = (http.clone(), event(&sessions[1], "p", 999, "after"));
            async move { http.publish(&event).await }
        },
    )
    .await;
    println!(
        "publishing recovered {:.2} s after the broker resumed",
        resumed.elapsed().as_secs_f64()
    );
    assert!(
        recovered.offset.0 > 0,
        "the recovered publish has an offset"
    );
    let replaced = replacements(&stack).await - replaced_before;
    assert_eq!(
        replaced, 0.0,
        "producer replacements: timeouts are recovered by librdkafka's epoch bump"
    );
}

/// `agentwire_kafka_producer_replacements_total` of the stack's gateway (0 before the first).
async fn replacements(stack: &Stack) -> f64 {
    stack
        .metric(agentwire_kafka::PRODUCER_REPLACEMENTS)
        .await
        .unwrap_or(0.0)
}
