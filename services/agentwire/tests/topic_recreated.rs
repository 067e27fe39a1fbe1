//! Deleting and re-creating the log topic restarts its offsets at 0 under session windows, relay
//! marks and consumer-group offsets that belong to the old log. Before, the relay went on
//! silently (at its old position, skipping the new log's first records, and linking new records
//! into old windows). Now it notices within seconds, from the record it remembered of each
//! partition (a log probe), and stops with `LogReset` naming the remedy, counted in
//! `agentwire_relay_log_resets_total`. The gateway's producer survives the deletion too.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use agentwire_protocol::SessionKey;
use agentwire_relay::RelayError;
use agentwire_test_support::wait_until;
use common::{LIMIT, Stack, event};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use tokio_util::sync::CancellationToken;

/// Publishes until the gateway accepts (the topic is being re-created); returns the offset.
async fn publish_until_accepted(stack: &Stack, session: &SessionKey, n: u64) -> u64 {
    let http = stack.http();
    let offset = OnceLock::new();
    wait_until(LIMIT, "a publish to the re-created topic", || async {
        match http.publish(&event(session, "p", n, "new log")).await {
            Ok(ack) => {
                let _ = offset.set(ack.offset.0);
                Ok(())
            }
            Err(err) => Err(err.to_string()),
        }
    })
    .await;
    *offset.get().expect("an offset")
}

async fn counter(stack: &Stack, name: &str) -> f64 {
    stack.metric(name).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_stops_the_relay_with_log_reset() {
    let stack = Stack::without_relay(1).await;
    let stop = CancellationToken::new();
    let relay = tokio::spawn(agentwire_relay::run(stack.relay_config(), stop.clone()));
    let session = stack.session("recreated");
    let http = stack.http();
    for n in 0..3 {
        http.publish(&event(&session, "p", n, "old log"))
            .await
            .expect("publish");
    }
    wait_until(
        LIMIT,
        "the window to hold the old log and a probe to be taken",
        || async {
            let window = http
                .history(&session, None, None)
                .await
                .map_err(|e| e.to_string())?;
            let probes = counter(&stack, "agentwire_relay_log_probes_taken_total").await;
            if window.len() == 3 && probes >= 1.0 {
                Ok(())
            } else {
                Err(format!("{} entries, {probes} probes", window.len()))
            }
        },
    )
    .await;
    assert!(
        !relay.is_finished(),
        "a healthy log does not stop the relay"
    );

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.env.kafka_brokers)
        .create()
        .expect("an admin client");
    let deleted = admin
        .delete_topics(
            &[stack.topic.as_str()],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("DeleteTopics");
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    stack.env.create_topic(&stack.topic, 1).await;
    for n in 10..16 {
        publish_until_accepted(&stack, &session, n).await;
    }

    let ended = tokio::time::timeout(LIMIT, relay)
        .await
        .expect("the relay stopped in time")
        .expect("the relay task");
    match ended {
        Err(RelayError::LogReset(reset)) => {
            assert_eq!(reset.partition, 0);
            println!("relay stopped: {}", RelayError::LogReset(reset));
        }
        other => panic!("the relay went on over a reset log: {other:?}"),
    }
    assert_eq!(
        counter(&stack, "agentwire_relay_log_resets_total").await,
        1.0
    );
    stop.cancel();
}
