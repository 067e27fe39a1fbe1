//! The resuming subscriber over a real socket: a scripted WebSocket peer on port 0 plays the
//! gateway's side of two connections, so the reconnect, the `after` it resumes with and the
//! duplicate defence are checked end to end. Tests against the real gateway live elsewhere.

use std::time::Duration;

use agentwire_client::{Subscriber, SubscriberConfig, WsConnection};
use agentwire_protocol::frames::event_frame_json;
use agentwire_protocol::{
    ClientFrame, Event, EventType, Offset, ServerFrame, SessionKey, Start, cloudevents,
};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, accept_async};

const LIMIT: Duration = Duration::from_secs(10);

type Peer = WebSocketStream<TcpStream>;

fn session() -> SessionKey {
    "acme:planner:s1".parse().expect("valid key")
}

async fn accept(listener: &TcpListener) -> Peer {
    let (stream, _) = listener.accept().await.expect("accept");
    accept_async(stream).await.expect("handshake")
}

async fn expect_frame(peer: &mut Peer) -> ClientFrame {
    loop {
        match peer.next().await.expect("open").expect("read") {
            Message::Text(text) => return ClientFrame::from_json(&text).expect("client frame"),
            Message::Close(_) => panic!("client closed"),
            _ => {}
        }
    }
}

async fn send_event(peer: &mut Peer, session: &SessionKey, offset: u64, text: &str) {
    let mut event = Event::new(
        session.clone(),
        EventType::new("agent.message").expect("type"),
    );
    event.text = Some(text.to_owned());
    let frame = event_frame_json(session, Offset(offset), &cloudevents::to_json(&event));
    peer.send(Message::text(frame)).await.expect("send event");
}

/// `subscribed` with the session's latest offset (`None`: its partition is empty).
async fn send_subscribed(peer: &mut Peer, session: &SessionKey, latest: Option<u64>) {
    let frame = ServerFrame::Subscribed {
        session: session.clone(),
        offset: latest.map(Offset),
        epoch: Some("e1".into()),
    };
    peer.send(Message::text(frame.to_json()))
        .await
        .expect("send subscribed");
}

#[tokio::test]
async fn reconnects_and_resumes_after_the_last_delivery_without_duplicates() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/v1/ws", listener.local_addr().expect("addr"));
    let s = session();

    let gateway = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut first = accept(&listener).await;
            assert_eq!(
                expect_frame(&mut first).await,
                ClientFrame::Subscribe {
                    session: s.clone(),
                    start: Start::New,
                    epoch: None
                }
            );
            send_subscribed(&mut first, &s, Some(10)).await;
            send_event(&mut first, &s, 11, "one").await;
            send_event(&mut first, &s, 12, "two").await;
            drop(first);

            let mut second = accept(&listener).await;
            let resumed = expect_frame(&mut second).await;
            assert_eq!(
                resumed,
                ClientFrame::Subscribe {
                    session: s.clone(),
                    start: Start::After(Offset(12)),
                    epoch: Some("e1".into())
                }
            );
            // An event before `subscribed` must be kept, and a replayed one dropped.
            send_event(&mut second, &s, 12, "two again").await;
            send_subscribed(&mut second, &s, Some(13)).await;
            send_event(&mut second, &s, 13, "three").await;
            second
        })
    };

    let config = SubscriberConfig {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(10),
        ..SubscriberConfig::default()
    };
    let run = async {
        let mut subscriber = Subscriber::connect_with(url, vec![(s.clone(), None)], config).await?;
        let mut texts = Vec::new();
        for _ in 0..3 {
            let delivery = subscriber.next().await?;
            texts.push((delivery.offset, delivery.event.text.unwrap_or_default()));
        }
        Ok::<_, agentwire_client::ClientError>((texts, subscriber))
    };
    let (texts, subscriber) = tokio::time::timeout(LIMIT, run)
        .await
        .expect("in time")
        .expect("subscriber");
    assert_eq!(
        texts,
        vec![
            (Offset(11), "one".into()),
            (Offset(12), "two".into()),
            (Offset(13), "three".into())
        ]
    );
    assert_eq!((subscriber.reconnects(), subscriber.dropped()), (1, 1));
    assert_eq!(subscriber.last_offsets().get(&s), Some(&Offset(13)));
    gateway.await.expect("gateway script");
}

#[tokio::test]
async fn subscribe_keeps_frames_that_arrive_before_its_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/v1/ws", listener.local_addr().expect("addr"));
    let (s, other) = (
        session(),
        "acme:planner:s2".parse::<SessionKey>().expect("key"),
    );

    let gateway = {
        let (s, other) = (s.clone(), other.clone());
        tokio::spawn(async move {
            let mut peer = accept(&listener).await;
            expect_frame(&mut peer).await;
            send_event(&mut peer, &other, 5, "early").await;
            send_subscribed(&mut peer, &s, Some(41)).await;
            peer
        })
    };

    let run = async {
        let mut conn = WsConnection::connect(&url).await?;
        let latest = conn.subscribe(&s, Some(Offset(40))).await?;
        let early = conn.next_frame().await?;
        Ok::<_, agentwire_client::ClientError>((latest, early))
    };
    let (latest, early) = tokio::time::timeout(LIMIT, run)
        .await
        .expect("in time")
        .expect("connection");
    assert_eq!(latest, Some(Offset(41)));
    assert!(
        matches!(early, ServerFrame::Event { session, offset: Offset(5), .. } if session == other)
    );
    gateway.await.expect("gateway script");
}

#[tokio::test]
async fn a_subscription_on_an_empty_partition_resumes_from_the_start_until_its_first_event() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/v1/ws", listener.local_addr().expect("addr"));
    let s = session();
    let subscribe = |start: Start| ClientFrame::Subscribe {
        session: s.clone(),
        start,
        epoch: None,
    };
    let gateway = {
        let (s, new, earliest) = (s.clone(), subscribe(Start::New), subscribe(Start::Earliest));
        tokio::spawn(async move {
            // No event yet: `subscribed` carries no cursor. The connection is then lost.
            let mut first = accept(&listener).await;
            assert_eq!(expect_frame(&mut first).await, new);
            send_subscribed(&mut first, &s, None).await;
            drop(first);
            // Still no cursor: the resume must not skip what was published meanwhile.
            let mut second = accept(&listener).await;
            assert_eq!(expect_frame(&mut second).await, earliest);
            send_subscribed(&mut second, &s, Some(1)).await;
            send_event(&mut second, &s, 0, "zero").await;
            send_event(&mut second, &s, 1, "one").await;
            drop(second);
            // With a delivery, the resume is an ordinary one after it.
            let mut third = accept(&listener).await;
            let resumed = expect_frame(&mut third).await;
            assert!(
                matches!(
                    resumed,
                    ClientFrame::Subscribe {
                        start: Start::After(Offset(1)),
                        ..
                    }
                ),
                "{resumed:?}"
            );
            send_subscribed(&mut third, &s, Some(2)).await;
            send_event(&mut third, &s, 2, "two").await;
            third
        })
    };
    let config = SubscriberConfig {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(10),
        ..SubscriberConfig::default()
    };
    let run = async {
        let mut subscriber = Subscriber::connect_with(url, vec![(s.clone(), None)], config).await?;
        let mut offsets = Vec::new();
        for _ in 0..3 {
            offsets.push(subscriber.next().await?.offset);
        }
        Ok::<_, agentwire_client::ClientError>((offsets, subscriber))
    };
    let (offsets, subscriber) = tokio::time::timeout(LIMIT, run)
        .await
        .expect("in time")
        .expect("subscriber");
    assert_eq!(offsets, vec![Offset(0), Offset(1), Offset(2)]);
    assert_eq!((subscriber.reconnects(), subscriber.dropped()), (2, 0));
    gateway.await.expect("gateway script");
}
