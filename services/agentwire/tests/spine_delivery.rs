//! The spine end to end on real servers: HTTP publish → Kafka → relay → Valkey → WebSocket.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agentwire_client::{Delivery, PublishAck, Subscriber};
use agentwire_protocol::{Offset, SessionKey, cloudevents};
use common::{LIMIT, Stack, Valkey, event};
use futures::future::try_join_all;

/// Reads deliveries until `done` says enough, failing after [`LIMIT`].
async fn collect(
    subscriber: &mut Subscriber,
    mut done: impl FnMut(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done(&got) {
        let next = tokio::time::timeout_at(deadline, subscriber.next()).await;
        match next {
            Ok(Ok(delivery)) => got.push(delivery),
            Ok(Err(err)) => panic!("subscriber error after {} deliveries: {err}", got.len()),
            Err(_) => panic!("timed out after {} deliveries", got.len()),
        }
    }
    got
}

fn offsets_by_session(deliveries: &[Delivery]) -> BTreeMap<SessionKey, Vec<Offset>> {
    let mut map: BTreeMap<SessionKey, Vec<Offset>> = BTreeMap::new();
    for d in deliveries {
        map.entry(d.session.clone()).or_default().push(d.offset);
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_publish_reaches_a_subscriber_with_the_offset_post_returned() {
    let stack = Stack::start(4).await;
    let session = stack.session("s1");
    let mut subscriber = Subscriber::connect(&stack.ws_url, vec![(session.clone(), None)])
        .await
        .expect("subscribe");

    let ack = stack
        .http()
        .publish(&event(&session, "p1", 1, "hello"))
        .await
        .expect("publish");
    let got = collect(&mut subscriber, |got| !got.is_empty()).await;
    assert_eq!(got[0].offset, ack.offset);
    assert_eq!(got[0].event.text.as_deref(), Some("hello"));
    assert_eq!(
        got[0].event.id.map(|id| id.to_string()),
        Some(ack.id.clone())
    );

    let records = agentwire_kafka::read_range(
        &stack.kafka_settings(),
        &stack.topic,
        ack.partition,
        ack.offset,
        Offset(ack.offset.0 + 1),
        LIMIT,
    )
    .await
    .expect("read the record back");
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].key.as_deref(),
        Some(session.to_string().as_bytes())
    );
    let stored = cloudevents::from_json(
        std::str::from_utf8(records[0].value.as_deref().unwrap_or_default()).expect("utf-8"),
    )
    .expect("a CloudEvents record");
    assert_eq!(stored.id.map(|id| id.to_string()), Some(ack.id));
    assert_eq!(stored.session, session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_keep_each_session_in_order_without_gaps_or_duplicates() {
    concurrent_producers(&Valkey::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_valkey_cluster_concurrent_producers_keep_each_session_in_order() {
    concurrent_producers(&Valkey::cluster().await).await;
}

async fn concurrent_producers(valkey: &Valkey) {
    const PRODUCERS: usize = 4;
    const EVENTS: usize = 1000;
    const SESSIONS: usize = 20;
    const PARTITIONS: u32 = 4;
    let stack = Stack::start_on(valkey.env(), PARTITIONS).await;
    let sessions: Vec<SessionKey> = (0..SESSIONS)
        .map(|i| stack.session(&format!("s{i}")))
        .collect();
    // Four subscribers, each following half of the sessions, overlapping.
    let mut subscribers = Vec::new();
    for k in 0..4 {
        let followed: Vec<_> = sessions
            .iter()
            .skip(k * 5)
            .take(10)
            .chain(sessions.iter().take(if k == 3 { 5 } else { 0 }))
            .cloned()
            .collect();
        let sub = Subscriber::connect(
            &stack.ws_url,
            followed.iter().map(|s| (s.clone(), None)).collect(),
        )
        .await
        .expect("subscribe");
        subscribers.push((followed, sub));
    }

    let producers = (0..PRODUCERS).map(|p| {
        let http = stack.http();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let mut acks = Vec::with_capacity(EVENTS);
            for i in 0..EVENTS {
                let session = &sessions[(i * 7 + p) % SESSIONS];
                let producer = format!("producer-{p}");
                let ack = http
                    .publish(&event(
                        session,
                        &producer,
                        i as u64 + 1,
                        &format!("{p}/{i}"),
                    ))
                    .await
                    .expect("publish");
                acks.push((session.clone(), ack));
            }
            acks
        })
    });
    let acks: Vec<(SessionKey, PublishAck)> = try_join_all(producers)
        .await
        .expect("producers")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(acks.len(), PRODUCERS * EVENTS);
    let expected = common::offsets_by_session(acks.iter().map(|(s, a)| (s, a.offset)));

    for (followed, subscriber) in &mut subscribers {
        let want: usize = followed.iter().map(|s| expected[s].len()).sum();
        let got = collect(subscriber, |got| got.len() >= want).await;
        let by_session = offsets_by_session(&got);
        for session in followed.iter() {
            assert_eq!(
                by_session.get(session),
                expected.get(session),
                "deliveries of {session}"
            );
        }
        assert_eq!(subscriber.dropped(), 0, "the server sent duplicates");
    }

    let log = stack.log_by_key(PARTITIONS).await;
    for (session, offsets) in &expected {
        let in_log: Vec<Offset> = log
            .get(&session.to_string())
            .map(|r| r.iter().map(|m| m.offset).collect())
            .unwrap_or_default();
        assert_eq!(&in_log, offsets, "kafka records of {session}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_mid_history_while_publishing_has_no_loss_or_duplicate_at_the_seam() {
    seam(&Valkey::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_valkey_cluster_subscribing_mid_history_has_no_loss_or_duplicate_at_the_seam() {
    seam(&Valkey::cluster().await).await;
}

async fn seam(valkey: &Valkey) {
    let stack = Stack::start_on(valkey.env(), 2).await;
    let session = stack.session("seam");
    let http = stack.http();
    let first: Vec<_> = (1..=300)
        .map(|i| event(&session, "p", i, "history"))
        .collect();
    let mut acks = http.publish_batch(&first).await.expect("history batch");

    // Keep publishing while the subscriber joins in the middle of the history.
    let live = {
        let (http, session) = (http.clone(), session.clone());
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 301..=600 {
                acks.push(
                    http.publish(&event(&session, "p", i, "live"))
                        .await
                        .expect("publish"),
                );
            }
            acks
        })
    };
    let after = acks[149].offset;
    let mut subscriber = Subscriber::connect(&stack.ws_url, vec![(session.clone(), Some(after))])
        .await
        .expect("subscribe");
    acks.extend(live.await.expect("live publisher"));

    let want: Vec<Offset> = acks
        .iter()
        .map(|a| a.offset)
        .filter(|o| *o > after)
        .collect();
    let got = collect(&mut subscriber, |got| got.len() >= want.len()).await;
    let got: Vec<Offset> = got.iter().map(|d| d.offset).collect();
    assert_eq!(got, want);
    assert_eq!(subscriber.dropped(), 0, "the server sent duplicates");

    // Nothing more arrives: no duplicate after the last one either.
    let extra = tokio::time::timeout(Duration::from_millis(300), subscriber.next()).await;
    assert!(extra.is_err(), "unexpected extra delivery: {extra:?}");
    let distinct: BTreeSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), got.len());
}
