//! What a publisher is told is what happened: an append Kafka did not confirm is answered
//! `outcome_unknown` and resolved from the log (never written twice), an outcome is recorded
//! even when the publisher has gone away, and answers on a WebSocket come in publish order,
//! refusals included.

mod common;

use std::time::Duration;

use agentwire_client::{ClientError, HttpClient, WsConnection};
use agentwire_protocol::{ClientFrame, ErrorCode, ServerFrame, SessionKey};
use agentwire_test_support::{TestEnv, wait_until};
use common::{LIMIT, Stack, event, sequenced};

/// The log's records of `session` numbered `seq` by `producer`, as offsets.
async fn copies_of(stack: &Stack, session: &SessionKey, seq: u64, producer: &str) -> Vec<u64> {
    let log = stack.log_by_key(1).await;
    log.get(&session.to_string())
        .into_iter()
        .flatten()
        .filter(|record| {
            let json =
                std::str::from_utf8(record.value.as_deref().unwrap_or_default()).expect("utf-8");
            let event = agentwire_protocol::cloudevents::from_json(json).expect("event");
            event.producer_seq == Some(seq)
                && event.producer_id.is_some_and(|p| p.as_str() == producer)
        })
        .map(|record| record.offset.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_kafka_did_not_confirm_is_resolved_from_the_log_never_written_twice() {
    let (stack, mut broker) = Stack::on_own_broker(1, |_| {}).await;
    let session = stack.session("hung-broker");
    let http = HttpClient::with_timeout(&stack.http_url, Duration::from_secs(45)).expect("client");
    http.publish(&sequenced(&session, "w", 0, 1, "confirmed"))
        .await
        .expect("publish while the broker answers");

    // A hung broker: the request is sent and read by nobody until the delivery timeout.
    broker.pause();
    let err = http
        .publish(&sequenced(&session, "w", 0, 2, "unconfirmed"))
        .await
        .expect_err("no confirmation from a hung broker");
    broker.resume();
    match &err {
        ClientError::Http { status, code, .. } => assert_eq!(
            (*status, *code),
            (503, Some(ErrorCode::OutcomeUnknown)),
            "a timed-out append may be in the log; the answer must not say otherwise: {err}"
        ),
        other => panic!("expected a 503, got {other}"),
    }

    // The retry waits until the first append can no longer land, then asks the log.
    let retry = wait_until(LIMIT, "the retry of seq 2 to be answered", || {
        let (http, event) = (http.clone(), sequenced(&session, "w", 0, 2, "retry"));
        async move { http.publish(&event).await }
    })
    .await;
    let copies = copies_of(&stack, &session, 2, "w").await;
    // duplicate=true: the hung broker wrote the first append after all.
    println!(
        "retry of seq 2 answered duplicate={} at offset {}",
        retry.duplicate, retry.offset
    );
    assert_eq!(
        copies,
        vec![retry.offset.0],
        "exactly one copy, the one acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_leaves_before_its_ack_does_not_strand_its_sequence() {
    // A stranded reservation would make the retry wait this long.
    let (stack, mut broker) = Stack::on_own_broker(1, |config| {
        config.dedupe_pending_stale_ms = 600_000;
    })
    .await;
    let session = stack.session("left");
    let http = HttpClient::with_timeout(&stack.http_url, LIMIT).expect("client");
    // Connects the gateway's producer and rebuilds the tenant's producer states (which reads
    // the log) before the broker is frozen.
    http.publish(&sequenced(
        &session,
        "warm-up",
        0,
        1,
        "the producer is connected",
    ))
    .await
    .expect("warm-up publish");
    let mut ws = WsConnection::connect(&stack.ws_url).await.expect("connect");
    wait_until(LIMIT, "the connection to count", || async {
        stack.metric("agentwire_gateway_ws_connections").await == Some(1.0)
    })
    .await;

    // The ack cannot come while the broker is frozen: the connection ends first.
    broker.pause();
    ws.send(&ClientFrame::Publish {
        event: Box::new(sequenced(&session, "w", 0, 1, "sent, then gone")),
    })
    .await
    .expect("send");
    drop(ws);
    wait_until(LIMIT, "the connection to end", || async {
        stack.metric("agentwire_gateway_ws_connections").await == Some(0.0)
    })
    .await;
    broker.resume();
    wait_until(LIMIT, "the abandoned publish to reach the log", || async {
        copies_of(&stack, &session, 1, "w").await.len() == 1
    })
    .await;
    let retry = http
        .publish(&sequenced(&session, "w", 0, 1, "retry"))
        .await
        .expect("the retry is answered, not left waiting on the vanished connection");
    assert!(retry.duplicate, "the original was appended and settled");
    assert_eq!(
        copies_of(&stack, &session, 1, "w").await,
        vec![retry.offset.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_does_not_overtake_an_earlier_publishes_ack() {
    let stack = Stack::configured(TestEnv::from_env(), 1, |config| {
        config.tenant_publish_rate = 1;
        config.tenant_publish_burst = 1;
    })
    .await;
    let session = stack.session("ordered");
    let mut ws = WsConnection::connect(&stack.ws_url).await.expect("connect");
    for n in 1..=2 {
        ws.send(&ClientFrame::Publish {
            event: Box::new(event(&session, "p", n, "quota of one")),
        })
        .await
        .expect("send");
    }
    let first = tokio::time::timeout(LIMIT, ws.next_frame())
        .await
        .expect("first answer")
        .expect("frame");
    let second = tokio::time::timeout(LIMIT, ws.next_frame())
        .await
        .expect("second answer")
        .expect("frame");
    assert!(matches!(first, ServerFrame::Ack(_)), "first: {first:?}");
    match second {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}"),
        other => panic!("second: {other:?}"),
    }
}
