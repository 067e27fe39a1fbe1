//! The relay killed with SIGKILL in the middle of a stream and started again: it re-reads
//! what it had not committed, and the idempotent append makes that harmless.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use agentwire_client::Subscriber;
use agentwire_protocol::{Offset, SessionKey};
use agentwire_test_support::wait_until;
use agentwire_valkey::{HistorySettings, HistoryStore};
use common::{LIMIT, Stack, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_resumes_without_loss_or_duplicates() {
    const SESSIONS: usize = 5;
    const BATCHES: usize = 40;
    const BATCH: usize = 50;
    let stack = Stack::without_relay(3).await;
    let sessions: Vec<SessionKey> = (0..SESSIONS)
        .map(|i| stack.session(&format!("r{i}")))
        .collect();
    let mut subscriber = Subscriber::connect(
        &stack.ws_url,
        sessions.iter().map(|s| (s.clone(), None)).collect(),
    )
    .await
    .expect("subscribe");
    let mut relay = stack.relay_process();

    let publisher = {
        let (http, sessions) = (stack.http(), sessions.clone());
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for b in 0..BATCHES {
                let events: Vec<_> = (0..BATCH)
                    .map(|i| {
                        event(
                            &sessions[(b + i) % SESSIONS],
                            "p",
                            (b * BATCH + i) as u64 + 1,
                            "burst",
                        )
                    })
                    .collect();
                let batch_acks = http.publish_batch(&events).await.expect("publish");
                acks.extend(events.iter().map(|e| e.session.clone()).zip(batch_acks));
            }
            acks
        })
    };

    // Kill the relay once it has delivered part of the stream.
    let mut delivered = Vec::new();
    while delivered.len() < 300 {
        let d = tokio::time::timeout(LIMIT, subscriber.next())
            .await
            .expect("deliveries before the kill")
            .expect("delivery");
        delivered.push(d);
    }
    relay.kill();
    let mut relay = stack.relay_process();

    let acks = publisher.await.expect("publisher");
    let total = BATCHES * BATCH;
    assert_eq!(acks.len(), total);
    while delivered.len() < total {
        let d = tokio::time::timeout(LIMIT, subscriber.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {total} delivered; relay log:\n{}",
                    delivered.len(),
                    relay.log()
                )
            })
            .expect("delivery");
        delivered.push(d);
    }
    assert_eq!(subscriber.dropped(), 0, "the server sent duplicates");

    let expected = common::offsets_by_session(acks.iter().map(|(s, a)| (s, a.offset)));
    let mut seen: BTreeMap<SessionKey, Vec<Offset>> = BTreeMap::new();
    for d in &delivered {
        seen.entry(d.session.clone()).or_default().push(d.offset);
    }
    assert_eq!(seen, expected, "what subscribers saw");

    // Valkey holds each event once, in order.
    let store = HistoryStore::connect(&stack.env.valkey_url, HistorySettings::default())
        .await
        .expect("valkey");
    for (session, offsets) in &expected {
        let window = wait_until(
            Duration::from_secs(10),
            "the window to hold every event",
            || async {
                let window = store
                    .read_after(session, None, 10_000)
                    .await
                    .map_err(|e| e.to_string())?;
                if window.entries.len() >= offsets.len() {
                    Ok(window)
                } else {
                    Err(format!("{} entries", window.entries.len()))
                }
            },
        )
        .await;
        let in_valkey: Vec<Offset> = window.entries.iter().map(|(o, _)| *o).collect();
        assert_eq!(&in_valkey, offsets, "history window of {session}");
    }
    relay.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_during_a_valkey_outage_exits_and_loses_nothing() {
    let mut valkey = agentwire_test_support::ValkeyServer::start().await;
    let env = agentwire_test_support::TestEnv {
        valkey_url: valkey.url(),
        ..agentwire_test_support::TestEnv::from_env()
    };
    let stack = Stack::with_env(env, 1).await;
    let session = stack.session("outage");
    let mut relay = stack.relay_process();
    let http = stack.http();
    let first = http
        .publish(&event(&session, "p", 1, "before"))
        .await
        .expect("publish")
        .offset;
    let window_reaches = |offset: Offset| {
        let (url, session) = (stack.env.valkey_url.clone(), session.clone());
        async move {
            wait_until(LIMIT, "the relay to write the window", || async {
                let store = HistoryStore::connect(&url, HistorySettings::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let latest = store.latest(&session).await.map_err(|e| e.to_string())?;
                (latest == Some(offset))
                    .then_some(())
                    .ok_or(format!("window latest {latest:?}"))
            })
            .await
        }
    };
    window_reaches(first).await;

    valkey.kill();
    let second = http
        .publish(&event(&session, "p", 2, "during the outage"))
        .await
        .expect("publishing needs only Kafka")
        .offset;
    wait_until(LIMIT, "the relay to retry its Valkey write", || {
        std::future::ready(relay.log().contains("retrying the batch"))
    })
    .await;
    // Before the drain had a deadline this waited for Valkey forever.
    let status = relay.terminate(LIMIT).await;
    println!("relay stopped during the outage: {status}");

    // What it could not write stayed uncommitted: the next relay writes it.
    valkey.restart().await;
    let _next = stack.relay_process();
    window_reaches(second).await;
}
