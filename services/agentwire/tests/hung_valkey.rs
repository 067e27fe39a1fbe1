//! A Valkey that hangs (stopped with SIGSTOP: connections stay open, nothing is answered) is
//! not allowed to stall the durable publish path: the inline per-tenant quota check fails open
//! after `AGENTWIRE_TENANT_QUOTA_TIMEOUT_MS` and the publish is acknowledged by Kafka.

mod common;

use std::time::{Duration, Instant};

use agentwire_client::WsConnection;
use agentwire_protocol::{ClientFrame, ServerFrame};
use common::{LIMIT, Stack, event};

async fn publish(conn: &mut WsConnection, event: agentwire_protocol::Event) -> Duration {
    let started = Instant::now();
    conn.send(&ClientFrame::Publish {
        event: Box::new(event),
    })
    .await
    .expect("send");
    let frame = tokio::time::timeout(LIMIT, conn.next_frame())
        .await
        .expect("an answer in time")
        .expect("a frame");
    assert!(matches!(frame, ServerFrame::Ack(_)), "{frame:?}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_valkey_does_not_stall_websocket_publishes() {
    let (stack, mut valkey) = Stack::with_own_valkey(1).await;
    let session = stack.session("hung");
    let mut conn = WsConnection::connect(&stack.ws_url).await.expect("connect");
    let healthy = publish(&mut conn, event(&session, "p", 1, "valkey up")).await;

    valkey.pause();
    let mut hung = Vec::new();
    for n in 2..=4 {
        hung.push(publish(&mut conn, event(&session, "p", n, "valkey hung")).await);
    }
    let timeouts = stack
        .metric(r#"agentwire_gateway_tenant_limiter_errors_total{reason="timeout"}"#)
        .await
        .unwrap_or(0.0);
    valkey.resume();
    println!("publish with valkey up: {healthy:?}; with valkey hung: {hung:?}");
    // Each hung check gave up at the quota's own bound (100 ms), not after the Valkey
    // client's response timeout (5 s, counted as reason="error"): no timing assertion needed.
    assert_eq!(
        timeouts, 3.0,
        "each publish failed open on the quota timeout"
    );
}

async fn readyz(stack: &Stack) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(format!("{}/readyz", stack.http_url))
        .timeout(LIMIT)
        .send()
        .await
        .expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// `/readyz` names what failed with a reason code (the raw error goes to the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_with_coded_reasons() {
    let (stack, mut valkey) = Stack::with_own_valkey(1).await;
    let (status, body) = readyz(&stack).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valkey"]["ok"], true, "{body}");

    valkey.pause();
    let body =
        agentwire_test_support::wait_until(LIMIT, "valkey reported as timed out", || async {
            let (status, body) = readyz(&stack).await;
            (status == 503 && body["valkey"]["reason"] == "timeout").then_some(body)
        })
        .await;
    println!("readyz with valkey hung: {body}");
    assert_eq!(body["kafka"]["ok"], true, "{body}");
    assert_eq!(body["ready"], false, "{body}");

    valkey.resume();
    valkey.kill();
    let body = agentwire_test_support::wait_until(LIMIT, "valkey reported as down", || async {
        let (_, body) = readyz(&stack).await;
        let reason = body["valkey"]["reason"].clone();
        (reason == "unreachable" || reason == "timeout").then_some(body)
    })
    .await;
    println!("readyz with valkey down: {body}");
    assert!(
        body["valkey"].get("error").is_none(),
        "no raw error: {body}"
    );
}

/// More follows than the fanout's command queue holds (1024) while Valkey hangs: every one is
/// answered `unavailable` within the follow's deadline; none waits forever for room in the
/// queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_during_a_hung_valkey_are_refused_not_stuck() {
    const FOLLOWERS: usize = 1100;
    let (stack, mut valkey) = Stack::with_own_valkey(1).await;
    let mut connections = Vec::with_capacity(FOLLOWERS);
    for _ in 0..FOLLOWERS {
        connections.push(WsConnection::connect(&stack.ws_url).await.expect("connect"));
    }
    // With Valkey up, so that the session's partition is known before it hangs.
    let warm = &mut connections[0];
    warm.send_text(format!(
        r#"{{"op":"subscribe","session":"{}"}}"#,
        stack.session("warm")
    ))
    .await
    .expect("send");
    let answer = tokio::time::timeout(LIMIT, warm.next_frame())
        .await
        .expect("an answer")
        .expect("a frame");
    assert!(
        matches!(answer, ServerFrame::Subscribed { .. }),
        "{answer:?}"
    );

    valkey.pause();
    let started = Instant::now();
    for (n, conn) in connections.iter_mut().enumerate() {
        let session = stack.session(&format!("follow-{n}"));
        conn.send_text(format!(r#"{{"op":"subscribe","session":"{session}"}}"#))
            .await
            .expect("send");
    }
    let answers = futures::future::join_all(
        connections
            .iter_mut()
            .map(|conn| tokio::time::timeout(LIMIT, conn.next_frame())),
    )
    .await;
    let took = started.elapsed();
    valkey.resume();
    let mut unanswered = 0;
    for answer in answers {
        match answer {
            Ok(Ok(ServerFrame::Error(e))) => {
                assert_eq!(e.code, agentwire_protocol::ErrorCode::Unavailable, "{e:?}");
            }
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(_) => unanswered += 1,
        }
    }
    println!("{FOLLOWERS} follows with valkey hung answered within {took:?}");
    assert_eq!(unanswered, 0, "follows left waiting for room in the queue");
}
