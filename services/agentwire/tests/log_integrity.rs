//! Every record of a session's log reaches its readers: an event the gateway acknowledged is
//! one the relay accepts (one validation for every encoding), and a record that is not a valid
//! event of its session reaches subscribers, history and resume as a coded gap event instead
//! of silently nothing.

mod common;

use agentwire_client::Subscriber;
use agentwire_kafka::{CLOUDEVENTS_JSON, EventLog, LogRecord};
use agentwire_protocol::{Offset, SessionKey, cloudevents, pb};
use common::{Stack, event, receive};
use prost::Message as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_publishes_get_the_json_limits_so_nothing_acked_is_skipped() {
    let stack = Stack::start(1).await;
    let session = stack.session("pb-limits");
    let mut too_long = event(&session, "p", 1, "");
    too_long.text = Some("x".repeat(cloudevents::MAX_ATTRIBUTE_LEN + 1));
    let body = pb::EventBatch {
        events: vec![pb::Event::from(&too_long)],
    }
    .encode_to_vec();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", stack.http_url))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status();
    let answer: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_field", "{answer}");
    assert_eq!(answer["error"]["field"], "text", "{answer}");
    let log = stack.log_by_key(1).await;
    assert!(log.is_empty(), "nothing may be written: {log:?}");
}

/// Appends a raw record under `session`'s key, bypassing the gateway's validation.
async fn append_raw(stack: &Stack, session: &SessionKey, value: String) -> Offset {
    let log = EventLog::new(&stack.kafka_settings(), stack.topic.clone()).expect("producer");
    log.append(&LogRecord {
        key: session.to_string(),
        value,
        content_type: CLOUDEVENTS_JSON,
        traceparent: None,
        tracestate: None,
    })
    .await
    .expect("raw append")
    .offset
}

fn describe(delivery: &agentwire_client::Delivery) -> (Offset, String) {
    (delivery.offset, delivery.event.event_type.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_reaches_every_reader_as_a_gap_event() {
    let stack = Stack::start(1).await;
    let session = stack.session("gaps");
    let other = stack.session("elsewhere");
    let http = stack.http();
    let first = http
        .publish(&event(&session, "p", 1, "before"))
        .await
        .expect("publish")
        .offset;
    let mut subscriber = Subscriber::connect(&stack.ws_url, vec![(session.clone(), Some(first))])
        .await
        .expect("subscribe");

    let garbage = append_raw(&stack, &session, "not an event".to_owned()).await;
    let foreign = cloudevents::to_json(&event(&other, "p", 2, "misfiled"));
    let misfiled = append_raw(&stack, &session, foreign).await;
    let last = http
        .publish(&event(&session, "p", 3, "after"))
        .await
        .expect("publish")
        .offset;

    let expected = vec![
        (garbage, "agent.gap".to_owned()),
        (misfiled, "agent.gap".to_owned()),
        (last, "agent.message".to_owned()),
    ];
    let live: Vec<_> = receive(&mut subscriber, 3)
        .await
        .iter()
        .map(describe)
        .collect();
    assert_eq!(live, expected, "live delivery");
    let gap = receive_gap_data(&stack, &session, first).await;
    assert_eq!(gap["code"], "unreadable_record");
    assert_eq!(gap["reason"], "not_an_event");
    assert_eq!(gap["offset"], garbage.0);

    // From the window, and from the log once the window is gone.
    let history = |stack: &Stack| {
        let (http, session) = (stack.http(), session.clone());
        async move {
            http.history(&session, Some(first), None)
                .await
                .expect("history")
                .into_iter()
                .map(|(offset, event)| (offset, event.event_type.to_string()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(history(&stack).await, expected, "history from the window");
    let mut valkey = stack.valkey().await;
    let _: () = redis::cmd("DEL")
        .arg(agentwire_valkey::keys::history(&session))
        .query_async(&mut valkey)
        .await
        .expect("drop the window");
    assert_eq!(history(&stack).await, expected, "history from the log");

    // A resume from before the gaps (from the log, the window being gone) sees them too.
    let mut resumed = Subscriber::connect(&stack.ws_url, vec![(session.clone(), Some(first))])
        .await
        .expect("resume");
    let again: Vec<_> = receive(&mut resumed, 3)
        .await
        .iter()
        .map(describe)
        .collect();
    assert_eq!(again, expected, "resume");
}

/// The data of the first gap event after `after`, read back over HTTP.
async fn receive_gap_data(stack: &Stack, session: &SessionKey, after: Offset) -> serde_json::Value {
    let events = stack
        .http()
        .history(session, Some(after), None)
        .await
        .expect("history");
    let (_, gap) = events
        .iter()
        .find(|(_, e)| e.event_type.as_str() == "agent.gap")
        .expect("a gap event in history");
    let Some(agentwire_protocol::Data::Json(raw)) = &gap.data else {
        panic!("a gap event carries JSON data: {gap:?}");
    };
    serde_json::from_str(raw.get()).expect("gap data")
}
