//! When retention deleted part of the range after a cursor, the gateway says so instead of
//! silently resuming from what is left: `GET …/events` answers `410 history_unavailable` with the
//! first retained offset, and a WebSocket resume sends a `history_unavailable` error for the
//! session and then delivers everything that is retained, once, in order.

mod common;

use std::time::Duration;

use agentwire_protocol::{ClientFrame, ErrorCode, Offset, ServerFrame};
use common::{LIMIT, Stack, event};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{ClientConfig, Offset as KafkaOffset, TopicPartitionList};
use serde_json::Value;

/// Deletes the records of `partition` before `before` (what retention does), and returns the
/// partition's new first offset.
async fn delete_before(stack: &Stack, partition: i32, before: Offset) -> i64 {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.env.kafka_brokers)
        .create()
        .expect("an admin client");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(
            &stack.topic,
            partition,
            KafkaOffset::Offset(i64::try_from(before.0).expect("offset")),
        )
        .expect("partition");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let result = admin
        .delete_records(&offsets, &options)
        .await
        .expect("DeleteRecords");
    let element = &result.elements()[0];
    assert!(
        element.error().is_ok(),
        "DeleteRecords: {:?}",
        element.error()
    );
    let (low, _) = agentwire_kafka::watermarks(&stack.kafka_settings(), &stack.topic, partition)
        .await
        .expect("watermarks");
    low
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_into_deleted_records_is_told_history_is_unavailable() {
    // No relay, so no window: reads after a cursor come from the log.
    let stack = Stack::without_relay(1).await;
    let session = stack.session("retained");
    let http = stack.http();
    let mut offsets = Vec::new();
    for n in 0..10 {
        let ack = http
            .publish(&event(&session, "p", n, "e"))
            .await
            .expect("publish");
        offsets.push(ack.offset);
    }
    let low = delete_before(&stack, 0, offsets[5]).await;
    assert_eq!(
        low,
        i64::try_from(offsets[5].0).expect("offset"),
        "the log starts at the 6th event"
    );

    // HTTP: 410 with the first retained offset in the message.
    let url = format!(
        "{}/v1/sessions/{}/{}/{}/events?after={}",
        stack.http_url, session.tenant, session.agent_type, session.session_id, offsets[1]
    );
    let response = reqwest::get(&url).await.expect("history");
    assert_eq!(response.status().as_u16(), 410);
    let body: Value = response.json().await.expect("an error body");
    assert_eq!(body["error"]["code"], "history_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&offsets[5].to_string()), "{message}");

    // A cursor inside what is retained still reads normally.
    let retained = http
        .history(&session, Some(offsets[6]), None)
        .await
        .expect("history after a retained cursor");
    let got: Vec<Offset> = retained.iter().map(|(o, _)| *o).collect();
    assert_eq!(got, offsets[7..]);

    // WebSocket: the error for the session, then every retained event once, in order.
    let mut conn = agentwire_client::WsConnection::connect(&stack.ws_url)
        .await
        .expect("connect");
    conn.send(&ClientFrame::Subscribe {
        session: session.clone(),
        start: Some(offsets[1]).into(),
        epoch: None,
    })
    .await
    .expect("subscribe");
    let (mut told, mut delivered) = (false, Vec::new());
    while delivered.len() < 5 {
        let frame = tokio::time::timeout(LIMIT, conn.next_frame())
            .await
            .expect("a frame in time")
            .expect("a frame");
        match frame {
            ServerFrame::Subscribed { .. } => {}
            ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::HistoryUnavailable, "{e:?}");
                assert_eq!(e.session.as_ref(), Some(&session));
                assert!(
                    delivered.is_empty(),
                    "the loss is told before what follows it"
                );
                told = true;
            }
            ServerFrame::Event { offset, .. } => delivered.push(offset),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(told, "the client was told of the deleted range");
    assert_eq!(
        delivered,
        offsets[5..],
        "every retained event once, in order"
    );
}
