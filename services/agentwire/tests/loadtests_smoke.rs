//! A few seconds of each load scenario (`loadtests/`) against the real stack: they must run
//! end to end, write their reports, and lose and duplicate nothing. Speed is not asserted
//! here; the figures come from full runs (`loadtests/README.md`).

mod common;

use std::path::PathBuf;

use agentwire_loadtests::report::Report;
use agentwire_loadtests::wsload::Class;
use agentwire_loadtests::{fanout, publish, slow, soak, storm};
use agentwire_test_support::unique;
use common::Stack;

fn out() -> PathBuf {
    std::env::temp_dir().join(unique("loadtest-smoke"))
}

fn assert_written(report: &Report, dir: &std::path::Path) {
    for file in ["result.json", "summary.md", "latency.png"] {
        let meta = std::fs::metadata(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).expect("read"))
            .expect("json");
    assert_eq!(json["scenario"], report.scenario);
}

fn fanout_args(stack: &Stack, dir: &std::path::Path) -> fanout::Args {
    fanout::Args {
        gateway: stack.http_url.clone(),
        brokers: stack.env.kafka_brokers.clone(),
        topic: stack.topic.clone(),
        valkey: stack.env.valkey_url.clone(),
        sessions: 3,
        subscribers: 6,
        publishers: 2,
        rate: 200,
        seconds: 1.0,
        padding: 16,
        no_floors: true,
        peer: false,
        drain_seconds: 30.0,
        out: Some(dir.to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_with_its_floors_delivers_every_event_once() {
    let stack = Stack::start(2).await;
    let dir = out();
    let args = fanout::Args {
        no_floors: false,
        ..fanout_args(&stack, &dir)
    };
    let report = fanout::run(args, Class::Durable).await.expect("fanout");
    let ours = &report.series[0];
    assert_eq!((ours.lost, ours.duplicated), (0, 0));
    // 200 events, each to the 2 subscribers of its session.
    assert_eq!(ours.latency.count, 400);
    let names: Vec<&str> = report.series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "agentwire",
            "kafka produce→consume",
            "valkey publish→subscriber",
            "websocket echo (round trip)",
            "websocket fanout floor"
        ]
    );
    assert!(
        report.series.iter().all(|s| s.latency.count > 0),
        "{names:?}"
    );
    assert_written(&report, &dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_and_its_socketio_peer_run_end_to_end() {
    let stack = Stack::start(1).await;
    let dir = out();
    let args = fanout::Args {
        peer: true,
        ..fanout_args(&stack, &dir)
    };
    let report = fanout::run(args, Class::Ephemeral)
        .await
        .expect("ephemeral");
    let ours = &report.series[0];
    assert_eq!(ours.duplicated, 0);
    // Nothing is shed at this load: every message reached both subscribers of its session.
    assert_eq!((ours.latency.count, ours.shed), (400, 0));
    let peer = &report.series[1];
    assert_eq!(peer.name, "socket.io (redis adapter)");
    assert_eq!((peer.latency.count, peer.shed), (400, 0));
    assert_written(&report, &dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_http_and_websocket_is_acknowledged() {
    let stack = Stack::start(1).await;
    let dir = out();
    let args = publish::Args {
        gateway: stack.http_url.clone(),
        sessions: 4,
        http_clients: 2,
        ws_publishers: 2,
        ws_rate: 200,
        seconds: 1.0,
        padding: 16,
        out: Some(dir.clone()),
    };
    let report = publish::run(args).await.expect("publish");
    assert_eq!(report.series.len(), 2);
    assert!(
        report
            .series
            .iter()
            .all(|s| s.latency.count > 0 && s.publishes_per_sec > 0.0)
    );
    assert_eq!(
        report.series[1].latency.count, 200,
        "every WebSocket publish acked"
    );
    assert_eq!(report.figures["websocket publishes refused"], 0);
    assert_written(&report, &dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_resumes_every_client_without_loss_or_duplicates() {
    let stack = Stack::start(2).await;
    let dir = out();
    let args = storm::Args {
        gateway: stack.http_url.clone(),
        clients: 20,
        sessions: 4,
        rate: 100,
        seconds: 2.0,
        drain_seconds: 60.0,
        valkey: stack.env.valkey_url.clone(),
        out: Some(dir.clone()),
    };
    let report = storm::run(args).await.expect("storm");
    assert_eq!(
        report.figures["subscriber errors"],
        0,
        "first error: {:?}",
        report.figures.get("first subscriber error")
    );
    let ours = &report.series[0];
    if ours.lost > 0 {
        // Where were the missing events lost? The relay's side: each session's Valkey window.
        for session in report.figures["sessions"].as_array().into_iter().flatten() {
            let key: agentwire_protocol::SessionKey = session
                .as_str()
                .unwrap_or_default()
                .parse()
                .expect("session key");
            let window = stack.http().history(&key, None, Some(1000)).await;
            println!("{key}: window holds {:?} events", window.map(|w| w.len()));
        }
        // The gateway's side: catch-ups and their retries, deliveries, feed reconnects.
        let metrics = reqwest::get(format!("{}/metrics", stack.http_url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        for line in metrics.lines().filter(|l| {
            l.starts_with("agentwire_gateway_catch_up")
                || l.starts_with("agentwire_gateway_deliveries")
                || l.starts_with("agentwire_gateway_feed")
                || l.starts_with("agentwire_gateway_live_sessions")
        }) {
            println!("{line}");
        }
    }
    assert_eq!((ours.lost, ours.duplicated), (0, 0));
    assert!(
        report.figures["storm at event"].is_u64(),
        "the storm never hit: not every client had received an event"
    );
    assert_eq!(report.figures["clients that never received again"], 0);
    assert!(
        report.figures["reconnects"]
            .as_u64()
            .is_some_and(|r| r >= 20)
    );
    assert_written(&report, &dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_cost_the_fast_readers_nothing_durable() {
    let stack = Stack::start(1).await;
    let dir = out();
    let args = slow::Args {
        gateway: stack.http_url.clone(),
        clients: 10,
        slow_fraction: 0.2,
        events: 100,
        rate: 100,
        sessions: 2,
        event_bytes: 256,
        out: Some(dir.clone()),
    };
    let report = slow::run(args).await.expect("slow-consumers");
    assert!(
        report
            .series
            .iter()
            .all(|s| s.lost == 0 && s.latency.count > 0)
    );
    assert_written(&report, &dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_samples_the_processes_and_loses_nothing() {
    let stack = Stack::start(2).await;
    let dir = out();
    let args = soak::Args {
        gateway: stack.http_url.clone(),
        sessions: 3,
        subscribers: 6,
        publishers: 2,
        rate: 200,
        seconds: 3.0,
        padding: 16,
        drain_seconds: 30.0,
        sample_seconds: 0.5,
        out: Some(dir.clone()),
    };
    let report = soak::run(args).await.expect("soak");
    let ours = &report.series[0];
    assert_eq!((ours.lost, ours.duplicated), (0, 0));
    // 600 events, each to the 2 subscribers of its session.
    assert_eq!(ours.latency.count, 1200);
    let trace = report.resources.as_ref().expect("a resource trace");
    // The gateway and relay run inside this test; the broker and Valkey are processes.
    for name in ["broker", "valkey"] {
        assert!(
            trace.samples.iter().filter(|s| s.name == name).count() >= 2,
            "{name} sampled over time: {:?}",
            trace.samples
        );
    }
    assert!(trace.samples.iter().all(|s| s.rss_mib > 0.0));
    // (Restarts are not asserted here: other tests start and stop their own Valkeys meanwhile.)
    assert_written(&report, &dir);
    let chart = std::fs::metadata(dir.join("resources.png")).expect("resources.png");
    assert!(chart.len() > 0);
}
