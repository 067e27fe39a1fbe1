//! Dead connections are reaped: the server pings, and a client that answers nothing within
//! the idle timeout is disconnected; a client that answers pings stays.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentwire_protocol::{ClientFrame, ServerFrame};
use agentwire_test_support::{TestEnv, wait_until};
use common::{LIMIT, Stack};
use futures::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_reaped_and_a_live_one_is_kept() {
    let stack = Stack::configured(TestEnv::from_env(), 1, |config| {
        config.heartbeat_secs = 1;
        config.idle_timeout_secs = 2;
    })
    .await;

    // This client never reads, so it never answers the server's pings.
    let (mut silent, _) = tokio_tungstenite::connect_async(&stack.ws_url)
        .await
        .expect("connect");
    // This one pings every half second and reads its pongs (tungstenite answers the server's
    // pings while reading), until the silent one was reaped.
    let reaped = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (url, reaped) = (stack.ws_url.clone(), reaped.clone());
        tokio::spawn(async move {
            let mut alive = agentwire_client::WsConnection::connect(&url)
                .await
                .expect("connect");
            let mut pace = tokio::time::interval(Duration::from_millis(500));
            let mut rounds = 0;
            while !reaped.load(Ordering::SeqCst) {
                pace.tick().await;
                alive.send(&ClientFrame::Ping).await.expect("ping");
                let pong = tokio::time::timeout(LIMIT, alive.next_frame())
                    .await
                    .expect("pong in time")
                    .expect("frame");
                assert!(matches!(pong, ServerFrame::Pong), "{pong:?}");
                rounds += 1;
            }
            (alive, rounds)
        })
    };

    let metrics_url = format!("{}/metrics", stack.http_url);
    wait_until(
        Duration::from_secs(20),
        "the silent connection to be reaped",
        || async {
            let text = reqwest::get(&metrics_url)
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            let reaped = text.lines().any(|l| {
                l.starts_with("agentwire_gateway_ws_reaped_total{reason=\"idle\"}")
                    && !l.ends_with(" 0")
            });
            if reaped {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        },
    )
    .await;

    // The reaped client sees its connection end (after the pings it never read).
    let ended = tokio::time::timeout(LIMIT, async {
        loop {
            match silent.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent connection was not closed");

    // The live client is still served, well past the idle timeout.
    reaped.store(true, Ordering::SeqCst);
    let (mut alive, rounds) = keeper.await.expect("keeper");
    assert!(rounds >= 4, "the live client ran for only {rounds} pings");
    alive.send(&ClientFrame::Ping).await.expect("ping");
    let pong = tokio::time::timeout(LIMIT, alive.next_frame())
        .await
        .expect("pong in time")
        .expect("frame");
    assert!(matches!(pong, ServerFrame::Pong), "{pong:?}");
}
