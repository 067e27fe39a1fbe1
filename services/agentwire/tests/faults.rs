//! Real processes killed for real while clients are connected: every durable event still
//! reaches every subscriber once, in order.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use agentwire_client::{Subscriber, SubscriberConfig};
use agentwire_protocol::{Offset, SessionKey};
use agentwire_test_support::{ChildProcess, wait_until};
use common::{Stack, event};
use futures::future::join_all;

/// Publishes `count` events round-robin over `sessions` in batches, returning (session, offset).
fn publisher(
    stack: &Stack,
    sessions: Vec<SessionKey>,
    count: usize,
) -> tokio::task::JoinHandle<Vec<(SessionKey, Offset)>> {
    let http = agentwire_client::HttpClient::with_timeout(&stack.http_url, Duration::from_secs(30))
        .expect("client");
    tokio::spawn(async move {
        let mut acks = Vec::new();
        for b in 0..count / 10 {
            let events: Vec<_> = (0..10)
                .map(|i| {
                    event(
                        &sessions[(b * 10 + i) % sessions.len()],
                        "p",
                        (b * 10 + i) as u64 + 1,
                        "fault",
                    )
                })
                .collect();
            let batch = wait_until(Duration::from_secs(30), "a publish to succeed", || {
                let (http, events) = (http.clone(), events.clone());
                async move { http.publish_batch(&events).await }
            })
            .await;
            acks.extend(
                events
                    .iter()
                    .map(|e| e.session.clone())
                    .zip(batch.into_iter().map(|a| a.offset)),
            );
        }
        acks
    })
}

/// Reads until `subscriber` delivered `count` events; returns (session, offset) in order.
async fn drain(subscriber: &mut Subscriber, count: usize) -> Vec<(SessionKey, Offset)> {
    common::receive(subscriber, count)
        .await
        .into_iter()
        .map(|d| (d.session, d.offset))
        .collect()
}

/// `count` subscribers; client `i` follows session `i % sessions.len()` through the gateway
/// `gateways(i)` names (its URL and fallbacks), retrying its first connection for up to 30 s.
async fn connect_clients(
    count: usize,
    sessions: &[SessionKey],
    gateways: impl Fn(usize) -> (String, Vec<String>),
) -> Vec<Subscriber> {
    join_all((0..count).map(|i| {
        let (url, fallback_urls) = gateways(i);
        let config = SubscriberConfig {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            fallback_urls,
            ..SubscriberConfig::default()
        };
        let followed = vec![(sessions[i % sessions.len()].clone(), None)];
        async move {
            wait_until(Duration::from_secs(30), "a subscriber to connect", || {
                Subscriber::connect_with(url.clone(), followed.clone(), config.clone())
            })
            .await
        }
    }))
    .await
}

/// Drains every subscriber of [`connect_clients`] and asserts it received exactly the
/// acknowledged offsets of its session, in order, with no duplicate sent by the server.
/// `first`: what client 0 had already drained.
async fn every_client_got_every_event(
    subscribers: &mut [Subscriber],
    sessions: &[SessionKey],
    acks: &[(SessionKey, Offset)],
    first: &[(SessionKey, Offset)],
) {
    let expected = common::offsets_by_session(acks.iter().map(|(s, o)| (s, *o)));
    let results = join_all(subscribers.iter_mut().enumerate().map(|(i, sub)| {
        let session = sessions[i % sessions.len()].clone();
        let want = expected[&session].len() - if i == 0 { first.len() } else { 0 };
        async move { (session, drain(sub, want).await) }
    }))
    .await;
    for (i, (session, mut got)) in results.into_iter().enumerate() {
        if i == 0 {
            got.splice(0..0, first.iter().cloned());
        }
        let offsets: Vec<Offset> = got.iter().map(|(_, o)| *o).collect();
        assert_eq!(&offsets, &expected[&session], "client {i} of {session}");
    }
    for (i, sub) in subscribers.iter().enumerate() {
        assert_eq!(sub.dropped(), 0, "the server sent client {i} duplicates");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_killed_mid_stream_loses_nothing_for_connected_clients() {
    let (stack, mut valkey) = Stack::with_own_valkey(2).await;
    let sessions: Vec<SessionKey> = (0..4).map(|i| stack.session(&format!("v{i}"))).collect();
    let mut subscriber = Subscriber::connect(
        &stack.ws_url,
        sessions.iter().map(|s| (s.clone(), None)).collect(),
    )
    .await
    .expect("subscribe");

    let publishing = publisher(&stack, sessions.clone(), 600);
    let mut got = drain(&mut subscriber, 100).await;
    valkey.restart().await;
    let acks = publishing.await.expect("publisher");
    got.extend(drain(&mut subscriber, acks.len() - got.len()).await);

    let expected = common::offsets_by_session(acks.iter().map(|(s, o)| (s, *o)));
    let seen = common::offsets_by_session(got.iter().map(|(s, o)| (s, *o)));
    assert_eq!(seen, expected, "every event once");
    for (session, offsets) in offsets_in_order(&got) {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{session} out of order"
        );
    }
    assert_eq!(subscriber.dropped(), 0, "the server sent duplicates");
}

fn offsets_in_order(
    got: &[(SessionKey, Offset)],
) -> std::collections::BTreeMap<SessionKey, Vec<Offset>> {
    let mut map: std::collections::BTreeMap<SessionKey, Vec<Offset>> =
        std::collections::BTreeMap::new();
    for (s, o) in got {
        map.entry(s.clone()).or_default().push(*o);
    }
    map
}

fn gateway_process(stack: &Stack, port: u16) -> ChildProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentwire"));
    command
        .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
        .env("AGENTWIRE_KAFKA_BROKERS", &stack.env.kafka_brokers)
        .env("AGENTWIRE_TOPIC", &stack.topic)
        .env("AGENTWIRE_VALKEY_URL", &stack.env.valkey_url)
        .env("AGENTWIRE_AUTH", "off");
    ChildProcess::spawn("gateway", command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_200_connections_is_resumed_without_loss_or_duplicates() {
    const CLIENTS: usize = 200;
    let stack = Stack::start(2).await;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut gateway = gateway_process(&stack, port);
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let sessions: Vec<SessionKey> = (0..10).map(|i| stack.session(&format!("g{i}"))).collect();
    let mut subscribers = connect_clients(CLIENTS, &sessions, |_| (url.clone(), Vec::new())).await;

    // Publish through the in-process gateway (the one killed only serves subscribers).
    let publishing = publisher(&stack, sessions.clone(), 400);
    let first = drain(&mut subscribers[0], 5).await;
    gateway.kill();
    let _gateway = gateway_process(&stack, port);
    let acks = publishing.await.expect("publisher");

    every_client_got_every_event(&mut subscribers, &sessions, &acks, &first).await;
    let reconnects: u64 = subscribers.iter().map(Subscriber::reconnects).sum();
    assert!(
        reconnects >= CLIENTS as u64,
        "only {reconnects} reconnections for {CLIENTS} clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_one_killed_its_clients_resume_on_the_others() {
    const CLIENTS: usize = 60;
    const GATEWAYS: usize = 3;
    let stack = Stack::start(2).await;
    let ports: Vec<u16> = (0..GATEWAYS)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port()
        })
        .collect();
    let mut gateways: Vec<ChildProcess> =
        ports.iter().map(|p| gateway_process(&stack, *p)).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}/v1/ws"))
        .collect();
    let sessions: Vec<SessionKey> = (0..6).map(|i| stack.session(&format!("m{i}"))).collect();

    // Client i starts on gateway i % 3 and knows the other two.
    let mut subscribers = connect_clients(CLIENTS, &sessions, |i| {
        let home = i % GATEWAYS;
        let others = (1..GATEWAYS).map(|k| urls[(home + k) % GATEWAYS].clone());
        (urls[home].clone(), others.collect())
    })
    .await;

    // Publish through the in-process gateway; gateway 0 dies (for good) mid-stream.
    let publishing = publisher(&stack, sessions.clone(), 400);
    let first = drain(&mut subscribers[0], 5).await;
    gateways[0].kill();
    let killed = std::time::Instant::now();
    let acks = publishing.await.expect("publisher");

    every_client_got_every_event(&mut subscribers, &sessions, &acks, &first).await;
    let healed = killed.elapsed();
    for (i, sub) in subscribers.iter().enumerate() {
        if i % GATEWAYS == 0 {
            assert!(
                sub.reconnects() >= 1,
                "client {i} of the killed gateway reconnected"
            );
        } else {
            assert_eq!(
                sub.reconnects(),
                0,
                "client {i} of a live gateway stayed connected"
            );
        }
    }
    println!(
        "every client had every event {:.2} s after the kill ({CLIENTS} clients over {GATEWAYS} gateways, {} events, 0 lost, 0 duplicated)",
        healed.as_secs_f64(),
        acks.len()
    );
}
