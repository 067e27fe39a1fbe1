//! Per-connection token buckets: publishes over the bucket are refused with `rate_limited`
//! and a wait, write nothing, and a client that keeps pushing is closed with 1008.

mod common;

use agentwire_client::{ClientError, WsConnection};
use agentwire_protocol::{ClientFrame, ErrorCode, ServerFrame};
use agentwire_test_support::TestEnv;
use common::{LIMIT, Stack, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_the_bucket_are_refused_and_persistent_abuse_is_closed() {
    let stack = Stack::configured(TestEnv::from_env(), 1, |config| {
        config.ws_publish_rate = 5;
        config.ws_publish_burst = 5;
        config.ws_abuse_strikes = 30;
    })
    .await;
    let session = stack.session("limited");
    let mut conn = WsConnection::connect(&stack.ws_url).await.expect("connect");
    for seq in 1..=20 {
        let frame = ClientFrame::Publish {
            event: Box::new(event(&session, "p", seq, "burst")),
        };
        conn.send(&frame).await.expect("send");
    }
    let (mut acked, mut limited) = (0, 0);
    while acked + limited < 20 {
        let frame = tokio::time::timeout(LIMIT, conn.next_frame())
            .await
            .expect("an answer")
            .expect("frame");
        match frame {
            ServerFrame::Ack(_) => acked += 1,
            ServerFrame::Error(e) if e.code == ErrorCode::RateLimited => {
                assert!(
                    e.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 1000),
                    "{e:?}"
                );
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The burst passes (plus what refilled while sending); the rest is refused.
    assert!((5..=8).contains(&acked), "{acked} acked, {limited} refused");
    let log = stack.log_by_key(1).await;
    assert_eq!(
        log.get(&session.to_string()).map_or(0, Vec::len),
        acked,
        "refused publishes were written"
    );

    // Keep pushing: after 30 refusals in a row the server closes with 1008.
    let mut code = None;
    for seq in 21..=200 {
        let frame = ClientFrame::Publish {
            event: Box::new(event(&session, "p", seq, "abuse")),
        };
        if conn.send(&frame).await.is_err() {
            break;
        }
    }
    while code.is_none() {
        match tokio::time::timeout(LIMIT, conn.next_frame())
            .await
            .expect("the close in time")
        {
            Ok(_) => {}
            Err(ClientError::Closed { code: c, .. }) => code = Some(c),
            Err(other) => panic!("expected a close, got {other}"),
        }
    }
    assert_eq!(code, Some(Some(1008)));

    // The server is fine for everybody else.
    let mut other = WsConnection::connect(&stack.ws_url)
        .await
        .expect("connect again");
    other.send(&ClientFrame::Ping).await.expect("ping");
    let pong = tokio::time::timeout(LIMIT, other.next_frame())
        .await
        .expect("pong")
        .expect("frame");
    assert!(matches!(pong, ServerFrame::Pong));
}
