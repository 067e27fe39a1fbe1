//! Resume from anywhere: when the Valkey window cannot prove it holds everything after a
//! cursor (trimmed, or Valkey restarted empty), the gateway reads the gap from the session's
//! Kafka partition and joins the window and the live stream without loss or duplicate.

mod common;

use std::time::Duration;

use agentwire_client::Subscriber;
use agentwire_protocol::{Offset, SessionKey};
use agentwire_test_support::wait_until;
use common::{Stack, event, receive};

async fn publish(stack: &Stack, session: &SessionKey, from: u64, count: u64) -> Vec<Offset> {
    let events: Vec<_> = (from..from + count)
        .map(|i| event(session, "p", i, &format!("e{i}")))
        .collect();
    let mut offsets = Vec::new();
    for chunk in events.chunks(100) {
        let acks = stack.http().publish_batch(chunk).await.expect("publish");
        let partitions = 2;
        for ack in &acks {
            // The producer's partitioner is the one the gateway computes for log reads.
            assert_eq!(
                ack.partition,
                agentwire_kafka::partition_for(session.to_string().as_bytes(), partitions)
            );
        }
        offsets.extend(acks.iter().map(|a| a.offset));
    }
    offsets
}

async fn history_offsets(stack: &Stack, session: &SessionKey, after: Offset) -> Vec<Offset> {
    let events = stack
        .http()
        .history(session, Some(after), Some(1000))
        .await
        .expect("history");
    events.into_iter().map(|(o, _)| o).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_a_trimmed_window_resumes_from_the_log() {
    let mut stack = Stack::without_relay(2).await;
    stack.history_maxlen = 10;
    stack.spawn_relay();
    let session = stack.session("trimmed");
    let offsets = publish(&stack, &session, 1, 600).await;

    // Wait until the relay wrote everything and Valkey trimmed the window.
    let store = agentwire_valkey::HistoryStore::connect(
        &stack.env.valkey_url,
        agentwire_valkey::HistorySettings::default(),
    )
    .await
    .expect("valkey");
    let last = *offsets.last().expect("offsets");
    wait_until(
        Duration::from_secs(30),
        "the trimmed window to hold the last event",
        || async {
            let window = store
                .read_after(&session, None, 10_000)
                .await
                .map_err(|e| e.to_string())?;
            match (window.latest, window.entries.len()) {
                (Some(latest), n) if latest == last && n < 600 => Ok(()),
                other => Err(format!("window latest/len {other:?}")),
            }
        },
    )
    .await;

    let after = offsets[0];
    let mut subscriber = Subscriber::connect(&stack.ws_url, vec![(session.clone(), Some(after))])
        .await
        .expect("subscribe");
    let got: Vec<Offset> = receive(&mut subscriber, 599)
        .await
        .iter()
        .map(|d| d.offset)
        .collect();
    assert_eq!(got, offsets[1..].to_vec());
    assert_eq!(subscriber.dropped(), 0, "the server sent duplicates");
    assert_eq!(
        history_offsets(&stack, &session, after).await,
        offsets[1..].to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_survives_valkey_restarting_empty() {
    let (stack, mut valkey) = Stack::with_own_valkey(2).await;
    let session = stack.session("wiped");
    let mut live = Subscriber::connect(&stack.ws_url, vec![(session.clone(), None)])
        .await
        .expect("subscribe");
    let before = publish(&stack, &session, 1, 40).await;
    receive(&mut live, 40).await;

    valkey.restart().await;
    // Publishing needs Kafka only (the tenant quota fails open while Valkey restarts).
    let after_restart = publish(&stack, &session, 41, 30).await;
    let cursor = before[19];
    let subscriber = wait_until(
        Duration::from_secs(30),
        "a subscription after the Valkey restart",
        || Subscriber::connect(&stack.ws_url, vec![(session.clone(), Some(cursor))]),
    )
    .await;
    let mut subscriber = subscriber;
    let want: Vec<Offset> = before[20..]
        .iter()
        .chain(after_restart.iter())
        .copied()
        .collect();
    let got: Vec<Offset> = receive(&mut subscriber, want.len())
        .await
        .iter()
        .map(|d| d.offset)
        .collect();
    assert_eq!(got, want);
    assert_eq!(subscriber.dropped(), 0, "the server sent duplicates");
    assert_eq!(history_offsets(&stack, &session, cursor).await, want);
}
