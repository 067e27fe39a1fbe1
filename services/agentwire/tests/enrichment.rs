//! The enricher on the real stack: publish a text event → subscribers get the event, then its
//! `enriched` annotation (labels, near duplicate); the enricher stopped → delivery goes on, and
//! after a restart it catches up, annotating each event once.

mod common;

use std::time::Duration;

use agentwire_protocol::{Enrichment, Offset, SessionKey};
use agentwire_test_support::unique;
use common::enricher::{self, Enricher};
use common::ws::{Ws, next_frame, subscribe};
use common::{LIMIT, Stack, event};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A connection following `tenant`'s label feed `label`.
async fn follow_label(stack: &Stack, tenant: &str, label: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(&stack.ws_url)
        .await
        .expect("connect");
    let frame = serde_json::json!({"op": "subscribe", "tenant": tenant, "label": label});
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send");
    let subscribed = next_frame(&mut ws).await;
    assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["label"], label, "{subscribed}");
    ws
}

/// Reads frames until `want` events and `want_enriched` annotations arrived; returns them in
/// arrival order as (op, offset) pairs, plus the annotations.
async fn read_until(
    ws: &mut Ws,
    want: usize,
    want_enriched: usize,
) -> (Vec<(String, u64)>, Vec<Value>) {
    let (mut order, mut annotations) = (Vec::new(), Vec::new());
    let mut events = 0;
    while events < want || annotations.len() < want_enriched {
        let frame = next_frame(ws).await;
        let op = frame["op"].as_str().expect("op").to_owned();
        let offset = frame["offset"].as_u64().expect("offset");
        match op.as_str() {
            "event" => events += 1,
            "enriched" => annotations.push(frame.clone()),
            other => panic!("unexpected frame {other}: {frame}"),
        }
        order.push((op, offset));
    }
    (order, annotations)
}

/// Every enrichment record of the stack's enriched topic for `session`.
async fn enriched_records(stack: &Stack, session: &SessionKey, partitions: u32) -> Vec<Enrichment> {
    let settings = stack.kafka_settings();
    let mut out = Vec::new();
    for partition in 0..i32::try_from(partitions).expect("partitions") {
        let (low, high) = agentwire_kafka::watermarks(&settings, &stack.enriched_topic, partition)
            .await
            .expect("watermarks");
        let records = agentwire_kafka::read_range(
            &settings,
            &stack.enriched_topic,
            partition,
            Offset(u64::try_from(low).unwrap_or(0)),
            Offset(u64::try_from(high).unwrap_or(0)),
            LIMIT,
        )
        .await
        .expect("read enriched");
        for record in records {
            let e: Enrichment =
                serde_json::from_slice(record.value.as_deref().unwrap_or_default()).expect("json");
            if &e.session == session {
                out.push(e);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_event_reaches_subscribers_then_its_enrichment() {
    let stack = Stack::start(2).await;
    let enricher = Enricher::start(enricher::config(&stack, &unique("enricher")));
    let session = stack.session("billing");
    let mut ws = subscribe(&stack, &session).await;
    // Label feeds: this tenant's billing and sports feeds, and another tenant's billing feed.
    let mut billing = follow_label(&stack, &stack.tenant, "billing").await;
    let mut sports = follow_label(&stack, &stack.tenant, "sports").await;
    let other_tenant = unique("t");
    let mut other_billing = follow_label(&stack, &other_tenant, "billing").await;
    let http = stack.http();

    let first = http
        .publish(&event(
            &session,
            "p",
            1,
            "My credit card was charged twice for the same subscription this month.",
        ))
        .await
        .expect("publish");
    let (order, annotations) = read_until(&mut ws, 1, 1).await;
    assert_eq!(
        order,
        vec![
            ("event".to_owned(), first.offset.0),
            ("enriched".to_owned(), first.offset.0)
        ],
        "the event first, then its annotation"
    );
    let a = &annotations[0];
    assert_eq!(a["session"], session.to_string());
    assert_eq!(a["labels"][0]["label"], "billing", "{a}");
    assert!(a["duplicate_of"].is_null(), "{a}");
    assert!(a.get("embedding").is_none(), "embeddings stay in the log");
    let version = a["version"].as_str().expect("a version").to_owned();
    assert!(
        version.starts_with(&format!("{}@", agentwire_enricher::MODEL_ID)),
        "{a}"
    );

    // A near duplicate of the first, then an event without text (not enriched), then another topic.
    let second = http
        .publish(&event(
            &session,
            "p",
            2,
            "My credit card was charged twice for the same subscription this month!",
        ))
        .await
        .expect("publish");
    let mut silent = event(&session, "p", 3, "");
    silent.text = None;
    let third = http.publish(&silent).await.expect("publish");
    let fourth = http
        .publish(&event(
            &session,
            "p",
            4,
            "The striker scored a hat-trick in the second half of the final.",
        ))
        .await
        .expect("publish");
    let (order, annotations) = read_until(&mut ws, 3, 2).await;
    let events: Vec<u64> = order
        .iter()
        .filter(|(op, _)| op == "event")
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(
        events,
        vec![second.offset.0, third.offset.0, fourth.offset.0]
    );
    for (i, (op, offset)) in order.iter().enumerate() {
        if op == "enriched" {
            assert!(
                order[..i]
                    .iter()
                    .any(|(o, off)| o == "event" && off == offset),
                "annotation of {offset} came before its event: {order:?}"
            );
        }
    }
    let dup = &annotations[0];
    assert_eq!(dup["offset"], second.offset.0);
    assert_eq!(dup["duplicate_of"], first.offset.0, "{dup}");
    assert!(dup["duplicate_score"].as_f64().expect("score") >= 0.95);
    assert_eq!(annotations[1]["offset"], fourth.offset.0);
    assert_eq!(
        annotations[1]["labels"][0]["label"], "sports",
        "{}",
        annotations[1]
    );
    assert!(annotations[1]["duplicate_of"].is_null());

    // The durable records: one per text event, with the source position and the embedding.
    let records = enriched_records(&stack, &session, 2).await;
    let offsets: Vec<Offset> = records.iter().map(|r| r.source.offset).collect();
    assert_eq!(offsets, vec![first.offset, second.offset, fourth.offset]);
    for r in &records {
        assert_eq!(r.embedding.len(), 384);
        assert_eq!(r.source.topic, stack.topic);
        assert_eq!(r.device, "cpu");
        assert_eq!(r.version(), version, "one version for one configuration");
        let norm: f32 = r.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "unit length, got {norm}");
    }
    assert_eq!(records[0].source.partition, first.partition);

    // Semantic routing: the billing feed got the two billing events, the sports feed the
    // sports one, each with the session it came from.
    let routed: Vec<Value> = vec![
        next_frame(&mut billing).await,
        next_frame(&mut billing).await,
    ];
    let offsets: Vec<u64> = routed
        .iter()
        .map(|a| a["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, vec![first.offset.0, second.offset.0]);
    assert!(
        routed
            .iter()
            .all(|a| a["op"] == "enriched" && a["session"] == session.to_string())
    );
    let sport = next_frame(&mut sports).await;
    assert_eq!(sport["offset"], fourth.offset.0, "{sport}");
    // Tenant isolation: another tenant's billing feed sees only its own tenant's events.
    let theirs = agentwire_protocol::SessionKey::parse_parts(&other_tenant, "planner", "s")
        .expect("session");
    let their_ack = http
        .publish(&event(
            &theirs,
            "p",
            1,
            "Please refund the duplicate charge on my invoice.",
        ))
        .await
        .expect("publish");
    let got = next_frame(&mut other_billing).await;
    assert_eq!(
        got["session"],
        theirs.to_string(),
        "first frame on the other tenant's feed: {got}"
    );
    assert_eq!(got["offset"], their_ack.offset.0);

    // The enricher's metrics (same process: the tests share one Prometheus recorder).
    let metrics = agentwire_runtime::metrics::handle().render();
    for name in [
        "agentwire_enricher_batch_size",
        "agentwire_enricher_batch_seconds",
        "agentwire_enricher_embeddings_total",
        "agentwire_enricher_embeddings_per_second",
        "agentwire_enricher_consumer_lag",
        "agentwire_enricher_gpu_active 0",
        "agentwire_enricher_records_skipped_total{reason=\"no_text\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    enricher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_goes_on_without_the_enricher_and_it_catches_up_after_a_restart() {
    let stack = Stack::start(2).await;
    let group = unique("enricher");
    let session = stack.session("incident");
    let mut ws = subscribe(&stack, &session).await;
    let http = stack.http();

    let enricher = Enricher::start(enricher::config(&stack, &group));
    let before = http
        .publish(&event(
            &session,
            "p",
            1,
            "Error rates spiked after the release; rolling back now.",
        ))
        .await
        .expect("publish");
    read_until(&mut ws, 1, 1).await;
    enricher.stop().await;

    // Stopped: events still flow, promptly, with no annotation.
    let texts = [
        "The database migration timed out and requests are failing.",
        "Shares of the chipmaker fell 8% after the earnings call.",
        "Please reset my password, I cannot log in to the dashboard.",
    ];
    let mut acks = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        acks.push(
            http.publish(&event(&session, "p", i as u64 + 2, text))
                .await
                .expect("publish"),
        );
    }
    let (order, annotations) = read_until(&mut ws, 3, 0).await;
    assert!(annotations.is_empty());
    assert_eq!(
        order.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        acks.iter().map(|a| a.offset.0).collect::<Vec<_>>()
    );

    // Restarted with the same group: it resumes where it stopped and annotates the three.
    let enricher = Enricher::start(enricher::config(&stack, &group));
    let (_, annotations) = read_until(&mut ws, 0, 3).await;
    let annotated: Vec<u64> = annotations
        .iter()
        .map(|a| a["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(
        annotated,
        acks.iter().map(|a| a.offset.0).collect::<Vec<_>>()
    );
    assert!(
        !annotated.contains(&before.offset.0),
        "no second annotation of the first event"
    );
    let records = enriched_records(&stack, &session, 2).await;
    assert!(
        records.len() >= 4,
        "every text event has its durable enrichment"
    );
    // Nothing more arrives: the first event's annotation is not repeated.
    let extra = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
    assert!(extra.is_err(), "unexpected frame: {extra:?}");
    enricher.stop().await;
}
