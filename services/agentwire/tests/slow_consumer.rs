//! A reader that stops reading falls behind without slowing anyone else and without losing
//! anything durable: its connection overflows its bounded mailbox and switches to catch-up
//! reads from history, and when it reads again it gets every event once, in order.

mod common;

use agentwire_client::{Subscriber, WsConnection};
use agentwire_protocol::{Offset, ServerFrame};
use common::{LIMIT, Stack, Valkey, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_catches_up_from_history_and_a_fast_one_is_not_held_back() {
    slow_and_fast_readers(&Valkey::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_valkey_cluster_a_slow_reader_catches_up_and_a_fast_one_is_not_held_back() {
    slow_and_fast_readers(&Valkey::cluster().await).await;
}

async fn slow_and_fast_readers(valkey: &Valkey) {
    const EVENTS: u64 = 3000;
    let mut stack = Stack::configured(valkey.env(), 1, |config| config.session_buffer = 16).await;
    stack.spawn_relay();
    let session = stack.session("slow");

    // The slow reader subscribes, then reads nothing until everything was published.
    let mut slow = WsConnection::connect(&stack.ws_url).await.expect("connect");
    slow.subscribe(&session, None).await.expect("subscribe");
    let mut fast = Subscriber::connect(&stack.ws_url, vec![(session.clone(), None)])
        .await
        .expect("subscribe");

    // Large events, so the slow reader's socket buffers fill and its connection lags.
    let text = "x".repeat(2048);
    let mut acked = Vec::new();
    for batch in 0..EVENTS / 100 {
        let events: Vec<_> = (1..=100)
            .map(|i| event(&session, "p", batch * 100 + i, &text))
            .collect();
        acked.extend(
            stack
                .http()
                .publish_batch(&events)
                .await
                .expect("publish")
                .into_iter()
                .map(|a| a.offset),
        );
    }

    let mut got_fast = Vec::new();
    while got_fast.len() < acked.len() {
        let d = tokio::time::timeout(LIMIT, fast.next())
            .await
            .expect("fast reader in time")
            .expect("delivery");
        got_fast.push(d.offset);
    }
    assert_eq!(got_fast, acked, "the fast reader");

    let mut got_slow: Vec<Offset> = Vec::new();
    while got_slow.len() < acked.len() {
        match tokio::time::timeout(LIMIT, slow.next_frame())
            .await
            .expect("slow reader in time")
            .expect("frame")
        {
            ServerFrame::Event { offset, .. } => got_slow.push(offset),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(
        got_slow, acked,
        "the slow reader: every event once, in order"
    );

    let lagged = stack
        .metric(r#"agentwire_gateway_catch_ups_total{reason="lagged"}"#)
        .await
        .unwrap_or(0.0);
    assert!(
        lagged >= 1.0,
        "the slow reader never lagged, so this test proved nothing"
    );
}
