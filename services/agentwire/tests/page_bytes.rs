//! History pages are bounded by bytes as well as by count: a page of ~512 KiB events holds far
//! fewer than its count limit (`AGENTWIRE_PAGE_MAX_BYTES`, 4 MiB by default), both when it is
//! read from the Valkey window and when it is read from the Kafka log, and paging on with the
//! last offset as the cursor returns every event once. The WebSocket catch-up pages the same
//! way and delivers everything.

mod common;

use agentwire_protocol::{ClientFrame, Offset, ServerFrame};
use agentwire_test_support::wait_until;
use common::{LIMIT, Stack};
use serde_json::Value;

/// Events of about 512 KiB of JSON.
const EVENT_BYTES: usize = 512 * 1024;
const LARGE_EVENTS: usize = 12;
/// The default page byte bound.
const PAGE_MAX_BYTES: usize = 4 * 1024 * 1024;

async fn publish(stack: &Stack, session: &str, pad: usize) -> u64 {
    let body = format!(
        r#"{{"type":"agent.message","tenant":"{}","agenttype":"planner","sessionid":"{session}","data":{{"pad":"{}"}}}}"#,
        stack.tenant,
        "x".repeat(pad)
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", stack.http_url))
        .header("content-type", "application/cloudevents+json")
        .body(body)
        .send()
        .await
        .expect("publish");
    assert!(response.status().is_success(), "{:?}", response.status());
    let ack: Value = response.json().await.expect("ack");
    ack["offset"].as_u64().expect("an offset")
}

async fn page(stack: &Stack, session: &str, after: u64) -> Value {
    let url = format!(
        "{}/v1/sessions/{}/planner/{session}/events?after={after}&limit=1000",
        stack.http_url, stack.tenant
    );
    let response = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .expect("history");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("a JSON body")
}

/// Pages through the history after `after`; checks each page's bounds and returns every
/// offset seen, in order.
async fn read_all(stack: &Stack, session: &str, after: u64) -> Vec<u64> {
    let mut cursor = after;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let body = page(stack, session, cursor).await;
        let events = body["events"].as_array().expect("events");
        let bytes: usize = events.iter().map(|e| e["event"].to_string().len()).sum();
        println!(
            "page {pages}: {} events, {bytes} bytes, more={}",
            events.len(),
            body["more"]
        );
        assert!(
            events.len() < LARGE_EVENTS,
            "a page of {} events of {EVENT_BYTES} bytes ignores the byte bound",
            events.len()
        );
        assert!(
            events.len() <= 1 || bytes <= PAGE_MAX_BYTES,
            "{bytes} bytes in one page"
        );
        seen.extend(events.iter().map(|e| e["offset"].as_u64().expect("offset")));
        pages += 1;
        if body["more"] != Value::Bool(true) {
            break;
        }
        assert!(
            !events.is_empty(),
            "a page with more to come holds an event"
        );
        cursor = *seen.last().expect("an offset");
        assert!(pages <= LARGE_EVENTS, "paging does not end");
    }
    assert!(pages > 1, "the byte bound split the history into pages");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_make_short_pages_and_paging_loses_nothing() {
    let mut stack = Stack::without_relay(1).await;
    let session = "large";
    let first = publish(&stack, session, 10).await;
    let mut published = Vec::new();
    for _ in 0..LARGE_EVENTS {
        published.push(publish(&stack, session, EVENT_BYTES).await);
    }

    // No relay yet, so no window: the pages come from the Kafka log.
    assert_eq!(
        read_all(&stack, session, first).await,
        published,
        "from the log"
    );

    // With the relay, the window holds them: the pages come from Valkey.
    stack.spawn_relay();
    let last = *published.last().expect("published");
    wait_until(LIMIT, "the window holds every event", || async {
        page(&stack, session, first).await["latest"].as_u64() == Some(last)
    })
    .await;
    assert_eq!(
        read_all(&stack, session, first).await,
        published,
        "from the window"
    );

    // The WebSocket catch-up pages the same way and delivers every event once.
    let mut conn = agentwire_client::WsConnection::connect(&stack.ws_url)
        .await
        .expect("connect");
    conn.send(&ClientFrame::Subscribe {
        session: stack.session(session),
        start: Some(Offset(first)).into(),
        epoch: None,
    })
    .await
    .expect("subscribe");
    let mut delivered = Vec::new();
    while delivered.len() < published.len() {
        let frame = tokio::time::timeout(LIMIT, conn.next_frame())
            .await
            .expect("a frame in time")
            .expect("a frame");
        match frame {
            ServerFrame::Subscribed { .. } => {}
            ServerFrame::Event { offset, .. } => delivered.push(offset.0),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered, published);
}
