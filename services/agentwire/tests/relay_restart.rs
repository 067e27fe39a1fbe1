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

/// The partitions of the last `partitions assigned` line of a relay's log (its current
/// assignment after an eager rebalance); `None` before the first assignment.
fn last_assignment(log: &str) -> Option<Vec<i32>> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))?;
    let list = line.rsplit_once('[')?.1.split_once(']')?.0;
    Some(
        list.split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect(),
    )
}

/// Two relays in one consumer group, one SIGKILLed under load: once its session times out
/// (6 s) the survivor holds every partition and nothing is lost or duplicated. (tansu 0.6.0,
/// the broker before nisshi, never handed the dead member's partitions over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_the_partitions_and_the_survivor_takes_over_a_killed_ones() {
    const PARTITIONS: u32 = 4;
    const SESSIONS: usize = 8;
    const EVENTS: usize = 1200;
    let stack = Stack::without_relay(PARTITIONS).await;
    let sessions: Vec<SessionKey> = (0..SESSIONS)
        .map(|i| stack.session(&format!("two{i}")))
        .collect();
    let mut subscriber = Subscriber::connect(
        &stack.ws_url,
        sessions.iter().map(|s| (s.clone(), None)).collect(),
    )
    .await
    .expect("subscribe");

    // Two relays in one consumer group: each ends up with part of the partitions.
    let mut doomed = stack.relay_process();
    let mut survivor = stack.relay_process();
    wait_until(LIMIT, "both relays to hold partitions", || {
        let (a, b) = (
            last_assignment(&doomed.log()),
            last_assignment(&survivor.log()),
        );
        async move {
            match (a, b) {
                (Some(a), Some(b))
                    if !a.is_empty()
                        && !b.is_empty()
                        && a.len() + b.len() == PARTITIONS as usize =>
                {
                    Ok(())
                }
                other => Err(format!("assignments so far: {other:?}")),
            }
        }
    })
    .await;

    // The load: one event every 2 ms, round robin over the sessions; the first half before
    // the kill, the second half only after it, so the killed relay's partitions get events
    // that only the survivor can relay.
    let publish = |from: usize, to: usize| {
        let (http, sessions) = (stack.http(), sessions.clone());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            let mut acks = Vec::with_capacity(to - from);
            for i in from..to {
                pace.tick().await;
                let session = &sessions[i % SESSIONS];
                let ack = http
                    .publish(&event(session, "p", i as u64 + 1, "load"))
                    .await
                    .expect("publish");
                acks.push((session.clone(), ack));
            }
            acks
        })
    };
    let first_half = publish(0, EVENTS / 2);

    let mut delivered = Vec::new();
    while delivered.len() < EVENTS / 4 {
        let d = tokio::time::timeout(LIMIT, subscriber.next())
            .await
            .expect("deliveries before the kill")
            .expect("delivery");
        delivered.push(d);
    }
    doomed.kill();
    let killed = std::time::Instant::now();
    let mut acks = first_half.await.expect("publisher");
    acks.extend(publish(EVENTS / 2, EVENTS).await.expect("publisher"));

    while delivered.len() < EVENTS {
        let d = tokio::time::timeout(LIMIT, subscriber.next())
            .await
            .unwrap_or_else(|_| {
                let log = survivor.log();
                panic!(
                    "only {} of {EVENTS} delivered; survivor's log:\n{}",
                    delivered.len(),
                    &log[log.len().saturating_sub(4000)..]
                )
            })
            .expect("delivery");
        delivered.push(d);
    }
    let all_delivered = killed.elapsed();
    assert_eq!(subscriber.dropped(), 0, "the server sent duplicates");
    let expected = common::offsets_by_session(acks.iter().map(|(s, a)| (s, a.offset)));
    let mut seen: BTreeMap<SessionKey, Vec<Offset>> = BTreeMap::new();
    for d in &delivered {
        seen.entry(d.session.clone()).or_default().push(d.offset);
    }
    assert_eq!(seen, expected, "what the subscriber saw");
    // The survivor's assignment line is logged by its own task: wait for it rather than
    // read it at one instant.
    let every: Vec<i32> = (0..PARTITIONS as i32).collect();
    wait_until(LIMIT, "the survivor to hold every partition", || {
        let held = last_assignment(&survivor.log()).map(|mut p| {
            p.sort_unstable();
            p
        });
        let every = every.clone();
        async move {
            (held.as_ref() == Some(&every))
                .then_some(())
                .ok_or(format!("the survivor holds {held:?}"))
        }
    })
    .await;
    println!(
        "every event delivered {:.2} s after the kill ({EVENTS} events, {SESSIONS} sessions, {PARTITIONS} partitions, 0 lost, 0 duplicated)",
        all_delivered.as_secs_f64()
    );
    survivor.kill();
}
