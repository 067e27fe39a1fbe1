//! Cursor poisoning: whoever can `PUBLISH` on a session's Valkey channel can announce
//! `<offset>\n<json>` as if the relay had. The gateway checks every announced event against
//! the session's window before delivery, so a forged announcement neither reaches followers
//! nor moves their cursors, and real events after it are still delivered.

mod common;

use agentwire_client::WsConnection;
use agentwire_protocol::{Offset, ServerFrame, SessionKey, cloudevents};
use agentwire_test_support::wait_until;
use agentwire_valkey::{HistorySettings, HistoryStore};
use common::{LIMIT, Stack, event};

/// The next `event` frame of `ws` (other frames are skipped): its session and offset.
async fn next_event(ws: &mut WsConnection) -> (SessionKey, Offset) {
    loop {
        let frame = tokio::time::timeout(LIMIT, ws.next_frame())
            .await
            .expect("a frame in time")
            .expect("a frame");
        if let ServerFrame::Event {
            session, offset, ..
        } = frame
        {
            return (session, offset);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_live_publication_neither_moves_cursors_nor_hides_real_events() {
    let stack = Stack::start(1).await;
    let session = stack.session("victim");
    let other = stack.session("elsewhere");
    let http = stack.http();
    let first = http
        .publish(&event(&session, "p", 1, "first"))
        .await
        .expect("publish");
    // The relay writes the window after the ack: until it holds `first`, the window is empty
    // and cannot contradict anything (a forgery then only counts as `unverifiable`).
    let store = HistoryStore::connect(&stack.env.valkey_url, HistorySettings::default())
        .await
        .expect("valkey");
    wait_until(LIMIT, "the window to hold the first event", || async {
        let latest = store.latest(&session).await.map_err(|e| e.to_string())?;
        if latest >= Some(first.offset) {
            Ok(())
        } else {
            Err(format!("the window's latest offset is {latest:?}"))
        }
    })
    .await;
    let mut ws = WsConnection::connect(&stack.ws_url).await.expect("connect");
    ws.subscribe(&session, Some(first.offset))
        .await
        .expect("subscribe");

    // Forged announcements on the session's channel, straight into Valkey.
    let mut conn = stack.valkey().await;
    let far = first.offset.0 + 1_000_000;
    let payloads = [
        // A well-formed event of this session, far ahead of the window.
        format!(
            "{far}\n{}",
            cloudevents::to_json(&event(&session, "p", 666, "forged"))
        ),
        // An event of another session.
        format!(
            "{}\n{}",
            far + 1,
            cloudevents::to_json(&event(&other, "p", 667, "forged"))
        ),
        // Not an event at all.
        format!("{}\n{{not json", far + 2),
    ];
    let channel = agentwire_valkey::keys::channel(&session);
    for payload in payloads {
        let receivers: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .expect("publish");
        assert!(receivers >= 1, "the gateway's feed subscribes the channel");
    }

    // Real events after the forgeries reach the follower, in order, and nothing else does.
    let second = http
        .publish(&event(&session, "p", 2, "second"))
        .await
        .expect("publish");
    assert_eq!(next_event(&mut ws).await, (session.clone(), second.offset));
    let third = http
        .publish(&event(&session, "p", 3, "third"))
        .await
        .expect("publish");
    assert_eq!(next_event(&mut ws).await, (session.clone(), third.offset));

    // The forgeries were counted by kind.
    let metrics_url = format!("{}/metrics", stack.http_url);
    wait_until(LIMIT, "the forged publications to be counted", || {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(url)
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            if text.contains(r#"agentwire_gateway_live_forged_total{reason="ahead_of_window"}"#)
                && text.contains(r#"agentwire_gateway_live_forged_total{reason="wrong_session"}"#)
            {
                Ok(())
            } else {
                let counted: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("agentwire_gateway_live_forged_total"))
                    .collect();
                Err(format!("counted so far: {counted:?}"))
            }
        }
    })
    .await;
}
