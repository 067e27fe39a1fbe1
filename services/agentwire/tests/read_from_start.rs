//! Reading a session from the start of the log (`"from":"earliest"` in `subscribe`,
//! `?from=earliest` on `GET …/events`): every event the log still holds, once, in order, then
//! live; from Kafka where the Valkey window does not reach. The Rust `Subscriber` uses it so
//! that a subscription made before its session's first event loses nothing on a reconnect.

mod common;

use std::time::Duration;

use agentwire_client::{Subscriber, WsConnection};
use agentwire_protocol::{ErrorCode, Offset, ServerFrame, SessionKey, Start};
use agentwire_test_support::wait_until;
use common::{LIMIT, Stack, event, receive};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{ClientConfig, Offset as KafkaOffset, TopicPartitionList};

/// Publishes `count` events to `session` over HTTP, in batches; their offsets.
async fn publish(stack: &Stack, session: &SessionKey, from: u64, count: u64) -> Vec<Offset> {
    let events: Vec<_> = (from..from + count)
        .map(|i| event(session, "p", i, &format!("e{i}")))
        .collect();
    let mut offsets = Vec::new();
    for chunk in events.chunks(100) {
        let acks = stack.http().publish_batch(chunk).await.expect("publish");
        offsets.extend(acks.iter().map(|a| a.offset));
    }
    offsets
}

fn offsets(deliveries: &[agentwire_client::Delivery]) -> Vec<Offset> {
    deliveries.iter().map(|d| d.offset).collect()
}

/// Every page of `session`'s history from the start of the log, `limit` events at most each.
async fn pages_from_earliest(stack: &Stack, session: &SessionKey, limit: u32) -> Vec<Vec<Offset>> {
    let http = stack.http();
    let mut page = http
        .history_page_from(session, Start::Earliest, Some(limit))
        .await
        .expect("first page");
    let mut pages = Vec::new();
    loop {
        pages.push(page.events.iter().map(|(o, _)| *o).collect::<Vec<_>>());
        if !page.more {
            return pages;
        }
        assert!(pages.len() < 1000, "paging does not end");
        page = http
            .history_page(session, page.next_after, Some(limit))
            .await
            .expect("next page");
    }
}

/// Deletes the records of `partition` before `before` (what retention does).
async fn delete_before(stack: &Stack, partition: i32, before: Offset) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.env.kafka_brokers)
        .create()
        .expect("an admin client");
    let mut offsets = TopicPartitionList::new();
    let before = i64::try_from(before.0).expect("offset");
    offsets
        .add_partition_offset(&stack.topic, partition, KafkaOffset::Offset(before))
        .expect("partition");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let result = admin
        .delete_records(&offsets, &options)
        .await
        .expect("DeleteRecords");
    let error = result.elements()[0].error();
    assert!(error.is_ok(), "DeleteRecords: {error:?}");
}

/// A subscriber following `session` from the start of the log.
async fn follow_from_start(stack: &Stack, session: &SessionKey) -> Subscriber {
    let mut subscriber = Subscriber::connect(&stack.ws_url, Vec::new())
        .await
        .expect("connect");
    subscriber
        .follow_from(session.clone(), Start::Earliest)
        .await
        .expect("follow from the start");
    subscriber
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_followed_before_the_first_event_misses_nothing_across_a_reconnect() {
    let stack = Stack::start(2).await;
    let session = stack.session("early");
    let mut subscriber = Subscriber::connect(&stack.ws_url, vec![(session.clone(), None)])
        .await
        .expect("subscribe");
    // The old failure's condition: the session's partition is empty, so `subscribed` gives no
    // cursor to resume from.
    let mut probe = WsConnection::connect(&stack.ws_url).await.expect("connect");
    let latest = probe.subscribe(&session, None).await.expect("subscribe");
    assert_eq!(latest, None, "the partition is empty");

    subscriber.drop_connection();
    let missed = publish(&stack, &session, 1, 20).await;
    let got = receive(&mut subscriber, missed.len()).await;
    assert_eq!(offsets(&got), missed, "what was published while away");
    assert_eq!(subscriber.reconnects(), 1);

    // Then live, with nothing sent twice.
    let live = publish(&stack, &session, 21, 3).await;
    assert_eq!(offsets(&receive(&mut subscriber, live.len()).await), live);
    assert_eq!(subscriber.dropped(), 0, "the server sent duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_earliest_reads_a_session_longer_than_its_window_from_the_log() {
    let mut stack = Stack::without_relay(2).await;
    stack.history_maxlen = 10;
    stack.spawn_relay();
    let session = stack.session("long");
    let other = stack.session("neighbour");
    let mut all = Vec::new();
    for round in 0..4 {
        all.extend(publish(&stack, &session, round * 100, 100).await);
        publish(&stack, &other, round * 100, 50).await;
    }
    let last = *all.last().expect("offsets");
    // Wait until the relay wrote everything and Valkey trimmed the window.
    let http = stack.http();
    let window = wait_until(
        LIMIT,
        "the trimmed window to hold the last event",
        || async {
            let window = http.history_page(&session, None, Some(1000)).await;
            match window.map(|page| page.events) {
                Ok(events)
                    if events.last().map(|e| e.0) == Some(last) && events.len() < all.len() =>
                {
                    Ok(events.len())
                }
                other => Err(format!("window: {:?}", other.map(|e| e.len()))),
            }
        },
    )
    .await;
    assert!(
        window < all.len(),
        "the window holds {window} of {}",
        all.len()
    );

    // WebSocket: everything from the start, then live.
    let mut subscriber = follow_from_start(&stack, &session).await;
    assert_eq!(offsets(&receive(&mut subscriber, all.len()).await), all);
    let live = publish(&stack, &session, 1000, 5).await;
    assert_eq!(offsets(&receive(&mut subscriber, live.len()).await), live);
    assert_eq!(subscriber.dropped(), 0, "the server sent duplicates");
    let log_reads = stack
        .metric("agentwire_gateway_history_log_reads_total")
        .await;
    assert!(log_reads.is_some_and(|n| n > 0.0), "read from Kafka");
    all.extend(live);

    // HTTP: bounded pages from the start, paged on with `next_after`.
    let pages = pages_from_earliest(&stack, &session, 64).await;
    assert!(pages.iter().all(|p| p.len() <= 64), "pages are bounded");
    assert_eq!(pages.concat(), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_earliest_starts_at_the_first_offset_retention_kept() {
    let stack = Stack::start(1).await;
    let session = stack.session("retained");
    let published = publish(&stack, &session, 0, 10).await;
    delete_before(&stack, 0, published[4]).await;
    let kept = published[4..].to_vec();

    // The window may still hold older events: the log's start decides, with no error.
    let mut subscriber = follow_from_start(&stack, &session).await;
    assert_eq!(offsets(&receive(&mut subscriber, kept.len()).await), kept);
    assert_eq!(
        pages_from_earliest(&stack, &session, 3).await.concat(),
        kept
    );
}

/// The `error` frame answering the last request, skipping anything else.
async fn error_frame(conn: &mut WsConnection) -> agentwire_protocol::ErrorFrame {
    loop {
        let frame = tokio::time::timeout(LIMIT, conn.next_frame())
            .await
            .expect("a frame in time")
            .expect("the connection stays open");
        if let ServerFrame::Error(error) = frame {
            return error;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_from_is_refused_naming_it_and_the_connection_goes_on() {
    let stack = Stack::start(1).await;
    let session = stack.session("bad-from");
    let mut conn = WsConnection::connect(&stack.ws_url).await.expect("connect");
    for bad in [
        format!(r#"{{"op":"subscribe","session":"{session}","after":3,"from":"earliest"}}"#),
        format!(r#"{{"op":"subscribe","session":"{session}","from":"bogus"}}"#),
    ] {
        conn.send_text(bad.clone()).await.expect("send");
        let error = error_frame(&mut conn).await;
        assert_eq!(error.code, ErrorCode::InvalidField, "{bad}: {error:?}");
        assert_eq!(error.field.as_deref(), Some("from"), "{bad}: {error:?}");
    }
    // The same connection subscribes from the start and gets the session's events.
    let before = publish(&stack, &session, 0, 2).await;
    conn.subscribe_from(&session, Start::Earliest)
        .await
        .expect("subscribe from the start");
    let after = publish(&stack, &session, 2, 1).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let frame = tokio::time::timeout(LIMIT, conn.next_frame())
            .await
            .expect("an event in time")
            .expect("the connection stays open");
        if let ServerFrame::Event { offset, .. } = frame {
            got.push(offset);
        }
    }
    assert_eq!(got, [before, after].concat());

    // HTTP says the same, with 400.
    for query in ["after=3&from=earliest", "from=bogus"] {
        let url = format!(
            "{}/v1/sessions/{}/{}/{}/events?{query}",
            stack.http_url, session.tenant, session.agent_type, session.session_id
        );
        let response = reqwest::get(&url).await.expect("history");
        assert_eq!(response.status().as_u16(), 400, "{query}");
        let body: serde_json::Value = response.json().await.expect("an error body");
        assert_eq!(body["error"]["code"], "invalid_field", "{query}: {body}");
        assert_eq!(body["error"]["field"], "from", "{query}: {body}");
    }
}
