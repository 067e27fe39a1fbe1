//! One limit per connection for everything it follows: sessions and label feeds together
//! (`AGENTWIRE_MAX_SUBSCRIPTIONS`), whichever comes first, so label feeds cannot add a second
//! allowance on top of the sessions'.

mod common;

use agentwire_client::WsConnection;
use agentwire_protocol::{ErrorCode, ServerFrame};
use agentwire_test_support::TestEnv;
use common::{LIMIT, Stack};

const MAX: usize = 1000;

async fn next(conn: &mut WsConnection) -> ServerFrame {
    tokio::time::timeout(LIMIT, conn.next_frame())
        .await
        .expect("an answer in time")
        .expect("a frame")
}

/// Subscribes to `count` sessions named `<prefix>-<n>`, all sent before any answer is read;
/// returns how many were accepted and the codes of the refusals.
async fn subscribe_sessions(
    stack: &Stack,
    conn: &mut WsConnection,
    prefix: &str,
    count: usize,
) -> (usize, Vec<ErrorCode>) {
    for n in 0..count {
        let session = stack.session(&format!("{prefix}-{n}"));
        conn.send_text(format!(r#"{{"op":"subscribe","session":"{session}"}}"#))
            .await
            .expect("send");
    }
    let (mut accepted, mut refused) = (0, Vec::new());
    for _ in 0..count {
        match next(conn).await {
            ServerFrame::Subscribed { .. } => accepted += 1,
            ServerFrame::Error(e) => refused.push(e.code),
            other => panic!("unexpected {other:?}"),
        }
    }
    (accepted, refused)
}

async fn follow_feed(stack: &Stack, conn: &mut WsConnection, label: &str) -> ServerFrame {
    conn.send_text(format!(
        r#"{{"op":"subscribe","tenant":"{}","label":"{label}"}}"#,
        stack.tenant
    ))
    .await
    .expect("send");
    next(conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_label_feeds_count_against_one_limit() {
    let stack = Stack::configured(TestEnv::from_env(), 1, |config| {
        config.max_subscriptions = MAX;
    })
    .await;

    // Sessions first: the feed is one too many.
    let mut sessions_first = WsConnection::connect(&stack.ws_url).await.expect("connect");
    let (accepted, refused) = subscribe_sessions(&stack, &mut sessions_first, "a", MAX).await;
    assert_eq!((accepted, refused.len()), (MAX, 0));
    match follow_feed(&stack, &mut sessions_first, "billing").await {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::TooManySubscriptions, "{e:?}"),
        other => panic!("the feed over the limit was accepted: {other:?}"),
    }

    // A feed first: the last session is one too many.
    let mut feed_first = WsConnection::connect(&stack.ws_url).await.expect("connect");
    let answer = follow_feed(&stack, &mut feed_first, "billing").await;
    assert!(
        matches!(answer, ServerFrame::LabelSubscribed { .. }),
        "{answer:?}"
    );
    let (accepted, refused) = subscribe_sessions(&stack, &mut feed_first, "b", MAX).await;
    assert_eq!(accepted, MAX - 1, "sessions accepted next to one feed");
    assert_eq!(refused, vec![ErrorCode::TooManySubscriptions]);

    // Leaving the feed frees its place for a session.
    feed_first
        .send_text(format!(
            r#"{{"op":"unsubscribe","tenant":"{}","label":"billing"}}"#,
            stack.tenant
        ))
        .await
        .expect("send");
    let answer = next(&mut feed_first).await;
    assert!(
        matches!(answer, ServerFrame::LabelUnsubscribed { .. }),
        "{answer:?}"
    );
    let (accepted, refused) = subscribe_sessions(&stack, &mut feed_first, "c", 1).await;
    assert_eq!((accepted, refused.len()), (1, 0));
}

/// The process's resident set size, in bytes (the gateway runs in the test's process).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("a VmRSS line")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_sessions_that_stay_quiet_cost_one_registry_entry_each() {
    let mut stack = Stack::configured(TestEnv::from_env(), 1, |config| {
        config.max_subscriptions = MAX;
    })
    .await;
    stack.spawn_relay();
    let mut conn = WsConnection::connect(&stack.ws_url).await.expect("connect");
    let before = rss();
    let (accepted, _) = subscribe_sessions(&stack, &mut conn, "quiet", MAX).await;
    assert_eq!(accepted, MAX);
    let after = rss();
    println!(
        "RSS {} KiB before and {} KiB after following {MAX} quiet sessions ({} B per follow, \
         test process and gateway together)",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / MAX as u64
    );
    let followed = stack.metric("agentwire_gateway_live_sessions").await;
    assert_eq!(followed, Some(MAX as f64));

    // A message of one of them reaches its follower through the connection's one mailbox.
    let session = stack.session("quiet-7");
    let ack = stack
        .http()
        .publish(&common::event(&session, "p", 1, "hello"))
        .await
        .expect("publish");
    match next(&mut conn).await {
        ServerFrame::Event {
            session: s, offset, ..
        } => {
            assert_eq!((s, offset), (session, ack.offset));
        }
        other => panic!("unexpected {other:?}"),
    }
}
