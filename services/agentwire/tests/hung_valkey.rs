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
