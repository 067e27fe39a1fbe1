//! Sequence-based idempotency of publishes: a retry of an accepted `(tenant, producer_id,
//! producer_seq)` gets the original ack and appends nothing, on any gateway, by HTTP or
//! WebSocket, after a Valkey wipe and after its first gateway died mid-append; gaps and stale
//! epochs are refused with their codes.

mod common;

use std::time::Duration;

use agentwire_client::WsConnection;
use agentwire_kafka::{EventLog, LogRecord, watermarks};
use agentwire_protocol::{ErrorCode, ProducerId, Tenant, cloudevents};
use agentwire_valkey::{HistorySettings, HistoryStore, ProducerSettings, ProducerStore, Reserve};
use common::{LIMIT, Stack, Valkey, sequenced};

/// Records in the stack's single partition.
async fn records(stack: &Stack) -> i64 {
    let (_, high) = watermarks(&stack.kafka_settings(), &stack.topic, 0)
        .await
        .expect("watermarks");
    high
}

/// Posts `event` and returns the status and JSON body.
async fn post(base: &str, event: &agentwire_protocol::Event) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body(cloudevents::to_json(event))
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_get_the_original_ack_on_every_gateway_and_gaps_and_stale_epochs_are_refused() {
    retries_gaps_and_stale_epochs(&Valkey::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_valkey_cluster_retries_get_the_original_ack_and_gaps_are_refused() {
    retries_gaps_and_stale_epochs(&Valkey::cluster().await).await;
}

async fn retries_gaps_and_stale_epochs(valkey: &Valkey) {
    let mut stack = Stack::with_env(valkey.env(), 1).await;
    let other = stack.spawn_extra_gateway(|_| {}).await;
    let session = stack.session("idem");
    let tenant = Tenant::new(stack.tenant.clone()).expect("tenant");
    let producer = ProducerId::new("writer").expect("producer");
    let http = stack.http();
    let epoch = http.new_epoch(&tenant, &producer).await.expect("epoch");
    assert_eq!(epoch, 1, "a new producer's first epoch");

    let mut acks = Vec::new();
    for seq in 1..=3 {
        let ack = http
            .publish(&sequenced(&session, "writer", epoch, seq, "first"))
            .await
            .expect("publish");
        assert!(!ack.duplicate);
        acks.push(ack);
    }
    assert_eq!(records(&stack).await, 3);

    // The same retry through the other gateway (HTTP) and over a WebSocket.
    let (status, body) = post(&other, &sequenced(&session, "writer", epoch, 2, "retry")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicate"], true);
    assert_eq!(body["offset"], acks[1].offset.0);
    assert_eq!(body["partition"], acks[1].partition);
    let mut ws = WsConnection::connect(&stack.ws_url).await.expect("ws");
    let ack = ws
        .publish(&sequenced(&session, "writer", epoch, 3, "retry"))
        .await
        .expect("ws retry");
    assert!(ack.duplicate);
    assert_eq!(ack.offset, acks[2].offset);
    assert_eq!(records(&stack).await, 3, "retries appended nothing");

    // A gap names the expected sequence; nothing is written.
    let (status, body) = post(&other, &sequenced(&session, "writer", epoch, 5, "gap")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "sequence_gap");
    assert_eq!(body["error"]["expected_seq"], 4);
    let err = ws
        .publish(&sequenced(&session, "writer", epoch, 9, "gap"))
        .await
        .expect_err("a gap over the WebSocket");
    assert_eq!(err.code(), Some(ErrorCode::SequenceGap));

    // A new epoch fences the old one off; its sequence restarts at 1.
    let newer = http.new_epoch(&tenant, &producer).await.expect("epoch");
    assert_eq!(newer, epoch + 1);
    let (status, body) = post(
        &stack.http_url,
        &sequenced(&session, "writer", epoch, 4, "zombie"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "stale_epoch");
    assert_eq!(
        records(&stack).await,
        3,
        "refused publishes appended nothing"
    );

    // The same new publish reaching both gateways at once is appended once.
    let fresh = sequenced(&session, "writer", newer, 1, "raced");
    let (a, b) = tokio::join!(post(&stack.http_url, &fresh), post(&other, &fresh));
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(a.1["offset"], b.1["offset"], "both answers name one record");
    let duplicates = [&a.1, &b.1]
        .iter()
        .filter(|body| body["duplicate"] == true)
        .count();
    assert_eq!(
        duplicates, 1,
        "exactly one of the two appended: {a:?} {b:?}"
    );
    assert_eq!(records(&stack).await, 4);

    // Another tenant's producer of the same name is independent.
    let neighbour = agentwire_protocol::SessionKey::parse_parts(
        &agentwire_test_support::unique("t"),
        "planner",
        "idem",
    )
    .expect("key");
    let ack = http
        .publish(&sequenced(&neighbour, "writer", 0, 1, "other tenant"))
        .await
        .expect("another tenant's seq 1");
    assert!(!ack.duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_valkey_restarted_empty_is_still_deduplicated_from_the_log() {
    let (stack, mut valkey) = Stack::with_own_valkey(1).await;
    let session = stack.session("wipe");
    let tenant = Tenant::new(stack.tenant.clone()).expect("tenant");
    let producer = ProducerId::new("writer").expect("producer");
    let http = stack.http();
    let epoch = http.new_epoch(&tenant, &producer).await.expect("epoch");
    let mut acks = Vec::new();
    for seq in 1..=3 {
        acks.push(
            http.publish(&sequenced(&session, "writer", epoch, seq, "before"))
                .await
                .expect("publish"),
        );
    }

    valkey.kill();
    valkey.restart().await;

    // The gateway's Valkey connection comes back; the retry is answered from the rebuilt state.
    let retry = sequenced(&session, "writer", epoch, 2, "retry");
    let ack =
        agentwire_test_support::wait_until(LIMIT, "a publish after the Valkey restart", || {
            let (http, retry) = (http.clone(), retry.clone());
            async move { http.publish(&retry).await.ok() }
        })
        .await;
    assert!(ack.duplicate, "the retry after the wipe was deduplicated");
    assert_eq!(ack.offset, acks[1].offset);
    assert_eq!(records(&stack).await, 3);

    let (status, body) = post(
        &stack.http_url,
        &sequenced(&session, "writer", epoch, 5, "gap"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"]["expected_seq"], 4,
        "the next sequence came back from the log"
    );
    let next = http
        .publish(&sequenced(&session, "writer", epoch, 4, "after"))
        .await
        .expect("the next sequence");
    assert!(!next.duplicate);
    assert_eq!(
        http.new_epoch(&tenant, &producer).await.expect("epoch"),
        epoch + 1,
        "the epoch came back from the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_append_whose_gateway_died_finds_it_in_the_log_or_appends_it() {
    let stale = |config: &mut agentwire_gateway::GatewayConfig| {
        config.dedupe_pending_stale_ms = 200;
    };
    let stack = Stack::configured(agentwire_test_support::TestEnv::from_env(), 1, stale).await;
    let session = stack.session("died");
    let tenant = Tenant::new(stack.tenant.clone()).expect("tenant");
    let producer = ProducerId::new("writer").expect("producer");

    // Play the gateway that dies: reserve seq 1 and 2, append seq 1 to Kafka, record nothing.
    let valkey = HistoryStore::connect(&stack.env.valkey_url, HistorySettings::default())
        .await
        .expect("valkey");
    let dead = ProducerStore::new(
        valkey.connection(),
        ProducerSettings {
            pending_stale: Duration::from_millis(200),
            ..ProducerSettings::default()
        },
    );
    dead.mark_ready(&tenant).await.expect("ready");
    for seq in 1..=2 {
        assert_eq!(
            dead.reserve(&tenant, &producer, 0, seq)
                .await
                .expect("reserve"),
            Reserve::Reserved
        );
    }
    let log = EventLog::new(&stack.kafka_settings(), &stack.topic).expect("producer");
    let mut landed = sequenced(&session, "writer", 0, 1, "landed before the crash");
    landed.stamp(std::time::SystemTime::now());
    let appended = log
        .append(&LogRecord {
            content_type: agentwire_kafka::CLOUDEVENTS_JSON,
            key: session.to_string(),
            value: cloudevents::to_json(&landed),
            traceparent: None,
            tracestate: None,
        })
        .await
        .expect("append");

    // While the reservation is fresh a retry waits; once stale, it is taken over.
    let http = stack.http();
    let ack = http
        .publish(&sequenced(&session, "writer", 0, 1, "retry"))
        .await
        .expect("retry of the landed append");
    assert!(ack.duplicate, "found in the log, not appended again");
    assert_eq!(ack.offset, appended.offset);
    let ack = http
        .publish(&sequenced(&session, "writer", 0, 2, "retry"))
        .await
        .expect("retry of the lost append");
    assert!(!ack.duplicate, "not in the log: appended now");
    assert_eq!(records(&stack).await, 2);
    let again = http
        .publish(&sequenced(&session, "writer", 0, 2, "again"))
        .await
        .expect("another retry");
    assert!(again.duplicate);
    assert_eq!(again.offset, ack.offset);
}
