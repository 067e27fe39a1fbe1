//! Cursor epochs: `subscribed` and history name the epoch of a session's offsets; a resume
//! with the current epoch works, one with an epoch of another log (here: a gateway told the
//! log was reset, `AGENTWIRE_LOG_GENERATION` bumped) is refused with `epoch_changed`, so a
//! client tells "history was reset" from "caught up". A topic re-created with another partition
//! count changes the epoch too, within the gateway's partition-count refresh (10 s). (nisshi
//! does not implement CreatePartitions, so partitions are not added in place here.)

mod common;

use agentwire_client::WsConnection;
use agentwire_protocol::{ClientFrame, ErrorCode, Offset, ServerFrame};
use agentwire_test_support::wait_until;
use common::{Stack, event};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

async fn subscribed_epoch(ws: &mut WsConnection) -> Result<(Option<Offset>, String), ErrorCode> {
    match ws.next_frame().await.expect("frame") {
        ServerFrame::Subscribed { offset, epoch, .. } => Ok((offset, epoch.expect("an epoch"))),
        ServerFrame::Error(e) => Err(e.code),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_into_a_reset_log_is_refused_with_epoch_changed() {
    let mut stack = Stack::start(2).await;
    let session = stack.session("epoch");
    let ack = stack
        .http()
        .publish(&event(&session, "p", 1, "one"))
        .await
        .expect("publish");

    let mut ws = WsConnection::connect(&stack.ws_url).await.expect("connect");
    let subscribe = |after: Option<Offset>, epoch: Option<String>| ClientFrame::Subscribe {
        session: session.clone(),
        start: after.into(),
        epoch,
    };
    ws.send(&subscribe(None, None)).await.expect("send");
    let (_, epoch) = subscribed_epoch(&mut ws).await.expect("subscribed");
    assert_eq!(
        history_epoch(&stack, &session).await,
        epoch,
        "history names the same epoch"
    );

    // Resuming with the epoch the cursor came with works, on any gateway of the same log.
    let same_log = stack.spawn_extra_gateway(|_| {}).await;
    let mut other = WsConnection::connect(&format!("{}/v1/ws", same_log.replace("http", "ws")))
        .await
        .expect("connect");
    other
        .send(&subscribe(
            Some(Offset(ack.offset.0.saturating_sub(1))),
            Some(epoch.clone()),
        ))
        .await
        .expect("send");
    let (_, again) = subscribed_epoch(&mut other)
        .await
        .expect("same epoch resumes");
    assert_eq!(again, epoch);

    // A gateway whose log was reset (generation bumped) refuses the old cursor ...
    let reset = stack
        .spawn_extra_gateway(|config| config.log_generation = 2)
        .await;
    let mut fresh = WsConnection::connect(&format!("{}/v1/ws", reset.replace("http", "ws")))
        .await
        .expect("connect");
    fresh
        .send(&subscribe(Some(ack.offset), Some(epoch.clone())))
        .await
        .expect("send");
    assert_eq!(
        subscribed_epoch(&mut fresh).await.expect_err("refused"),
        ErrorCode::EpochChanged
    );
    // ... and the client starts over without a cursor, under the new epoch.
    fresh.send(&subscribe(None, None)).await.expect("send");
    let (_, new_epoch) = subscribed_epoch(&mut fresh).await.expect("subscribed");
    assert_ne!(new_epoch, epoch);
}

/// The epoch the gateway names for `session`'s offsets in a history answer.
async fn history_epoch(stack: &Stack, session: &agentwire_protocol::SessionKey) -> String {
    let history: serde_json::Value = reqwest::get(format!(
        "{}/v1/sessions/{}/{}/{}/events",
        stack.http_url, session.tenant, session.agent_type, session.session_id
    ))
    .await
    .expect("get")
    .json()
    .await
    .expect("json");
    history["epoch"].as_str().expect("an epoch").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_recreated_with_more_partitions_changes_the_epoch() {
    let stack = Stack::without_relay(1).await;
    let session = stack.session("grown");
    let before = history_epoch(&stack, &session).await;

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.env.kafka_brokers)
        .create()
        .expect("an admin client");
    let results = admin
        .delete_topics(
            &[stack.topic.as_str()],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10))),
        )
        .await
        .expect("DeleteTopics");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    stack.env.create_topic(&stack.topic, 3).await;

    wait_until(
        common::LIMIT,
        "the gateway to name a new epoch for the grown topic",
        || async {
            let now = history_epoch(&stack, &session).await;
            if now == before {
                Err(format!("still {now}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
}
