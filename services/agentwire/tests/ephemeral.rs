//! The ephemeral delivery class: fanned out through Valkey pub/sub only, never written to
//! Kafka or history, no offset; shed first when a reader falls behind, and every shed message
//! is counted, while the durable events of the same session all arrive.

mod common;

use std::time::Duration;

use agentwire_client::WsConnection;
use agentwire_protocol::{ClientFrame, Event, EventType, Offset, ServerFrame, SessionKey};
use agentwire_test_support::TestEnv;
use common::{LIMIT, Stack, Valkey, event};

fn token(session: &SessionKey, i: usize, text: &str) -> ClientFrame {
    let mut event = Event::new(
        session.clone(),
        EventType::new("agent.token").expect("type"),
    );
    event.text = Some(format!("{i}:{text}"));
    ClientFrame::Ephemeral {
        event: Box::new(event),
    }
}

/// The sum of a counter over its labels, from the gateway's `/metrics`.
async fn counter(stack: &Stack, name: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", stack.http_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_messages_reach_subscribers_in_order_and_never_the_log() {
    ephemerals_in_order(&Valkey::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_valkey_cluster_ephemeral_messages_reach_subscribers_in_order() {
    ephemerals_in_order(&Valkey::cluster().await).await;
}

async fn ephemerals_in_order(valkey: &Valkey) {
    let stack = Stack::start_on(valkey.env(), 1).await;
    let session = stack.session("stream");
    let mut subscriber = WsConnection::connect(&stack.ws_url).await.expect("connect");
    subscriber
        .subscribe(&session, None)
        .await
        .expect("subscribe");
    valkey.assert_subscribed(&session).await;
    let mut producer = WsConnection::connect(&stack.ws_url).await.expect("connect");
    for i in 0..20 {
        producer
            .send(&token(&session, i, "tok"))
            .await
            .expect("send");
    }
    let durable = producer
        .publish(&event(&session, "p", 1, "the answer"))
        .await
        .expect("durable publish");

    let mut texts = Vec::new();
    let mut delivered = None;
    while texts.len() < 20 || delivered.is_none() {
        match tokio::time::timeout(LIMIT, subscriber.next_frame())
            .await
            .expect("a frame in time")
            .expect("frame")
        {
            ServerFrame::Ephemeral { session: s, event } => {
                assert_eq!(s, session);
                let event = agentwire_protocol::cloudevents::from_json(event.get()).expect("event");
                texts.push(event.text.unwrap_or_default());
            }
            ServerFrame::Event { offset, .. } => delivered = Some(offset),
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<String> = (0..20).map(|i| format!("{i}:tok")).collect();
    assert_eq!(texts, expected, "in publish order");
    assert_eq!(delivered, Some(durable.offset));

    // Only the durable event is in the log and in history.
    let log = stack.log_by_key(1).await;
    assert_eq!(log.values().map(Vec::len).sum::<usize>(), 1);
    let history = stack
        .http()
        .history(&session, None, None)
        .await
        .expect("history");
    assert_eq!(history.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_sheds_ephemerals_counted_and_keeps_every_durable_event() {
    const TOKENS: usize = 5_000;
    let roomy = |config: &mut agentwire_gateway::GatewayConfig| {
        config.ephemeral_buffer = 16;
        config.ws_publish_rate = 1_000_000;
        config.ws_publish_burst = 1_000_000;
        config.ws_bytes_rate = 1 << 30;
    };
    let mut stack = Stack::configured(TestEnv::from_env(), 1, roomy).await;
    stack.spawn_relay();
    let session = stack.session("flood");
    let mut slow = WsConnection::connect(&stack.ws_url).await.expect("connect");
    slow.subscribe(&session, None).await.expect("subscribe");

    // 5,000 ephemerals of 8 KiB (40 MiB, far more than the socket buffers) while the slow
    // reader reads nothing, then three durable events.
    let padding = "x".repeat(8 * 1024);
    let mut producer = WsConnection::connect(&stack.ws_url).await.expect("connect");
    for i in 0..TOKENS {
        producer
            .send(&token(&session, i, &padding))
            .await
            .expect("send");
    }
    let mut acks = Vec::new();
    for n in 1..=3 {
        acks.push(
            producer
                .publish(&event(&session, "p", n, "durable"))
                .await
                .expect("durable")
                .offset,
        );
    }

    let mut received = 0usize;
    let mut durable: Vec<Offset> = Vec::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout(Duration::from_millis(200), slow.next_frame()).await {
            Ok(Ok(ServerFrame::Ephemeral { .. })) => received += 1,
            Ok(Ok(ServerFrame::Event { offset, .. })) => durable.push(offset),
            Ok(Ok(other)) => panic!("unexpected {other:?}"),
            Ok(Err(err)) => panic!("the slow reader lost its connection: {err}"),
            Err(_) => {
                let shed = counter(&stack, "agentwire_gateway_ephemeral_shed_total").await;
                if durable.len() == acks.len() && received + shed as usize == TOKENS {
                    assert!(shed > 0, "nothing was shed");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "received {received} + shed {shed} of {TOKENS}, durable {durable:?}"
                );
            }
        }
    }
    assert_eq!(durable, acks, "every durable event, once, in order");
    let delivered = counter(&stack, "agentwire_gateway_ephemeral_delivered_total").await;
    assert_eq!(delivered as usize, received);
}
