//! The Grafana dashboard (`infra/grafana/dashboards/agentwire.json`) against a real Prometheus:
//! a stack of the gateway, the relay (its own process, exporting traces to an endpoint nobody
//! answers) and the enricher carries traffic (HTTP publishes to a WebSocket subscriber, their
//! enrichments, an event without text, a tenant over its quota), Prometheus scrapes the gateway
//! and the relay every second with the rules of `infra/prometheus/rules.yml`, and then every
//! panel's query must return at least one series and name only metrics the services export.
//! The enricher runs in the test's process, so its metrics are scraped with the gateway's.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;

use agentwire_client::ClientError;
use agentwire_protocol::SessionKey;
use agentwire_test_support::{ChildProcess, PrometheusServer, TestEnv, promql, unique, wait_until};
use common::enricher::{self, Enricher};
use common::ws::{next_frame, subscribe};
use common::{LIMIT, Stack, event};

use serde_json::Value;

/// What Grafana puts in place of `$__rate_interval` at a 1 s scrape interval is smaller; a
/// minute keeps every rate defined once two scrapes are in.
const RATE_INTERVAL: &str = "1m";
/// Events the subscriber's session receives, the last without text.
const EVENTS: u64 = 6;

fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

/// A loopback address nobody listens on right now.
fn free_address() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Every panel's title with its queries, `$__rate_interval` replaced.
fn panel_queries() -> Vec<(String, String)> {
    let path = root().join("infra/grafana/dashboards/agentwire.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("a title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((
                title.to_owned(),
                expr.replace("$__rate_interval", RATE_INTERVAL),
            ));
        }
    }
    assert!(!queries.is_empty());
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_returns_data_from_metrics_the_services_export() {
    let queries = panel_queries();
    let stack = Stack::configured(TestEnv::from_env(), 2, |config| {
        // A tenant quota small enough for one noisy tenant to go over it.
        config.tenant_publish_rate = 1;
        config.tenant_publish_burst = 20;
    })
    .await;
    let relay_admin = free_address();
    let mut relay = stack.relay_command(&relay_admin.to_string());
    relay
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", free_address()),
        )
        .env("OTEL_SERVICE_NAME", "agentwire-relay");
    let _relay = ChildProcess::spawn("relay", relay);
    let enriching = Enricher::start(enricher::config(&stack, &unique("enricher")));
    let gateway: SocketAddr = stack
        .http_url
        .trim_start_matches("http://")
        .parse()
        .expect("the gateway's address");
    let rules = root().join("infra/prometheus/rules.yml");
    let prometheus = PrometheusServer::start(
        &[
            ("agentwire-gateway", gateway),
            ("agentwire-relay", relay_admin),
        ],
        &[rules.as_path()],
    )
    .await;

    // Traffic: a subscriber receives text events, one without text, and their enrichments.
    let session = stack.session("dashboard");
    let mut ws = subscribe(&stack, &session).await;
    let http = stack.http();
    for n in 1..EVENTS {
        let text = format!("I was charged twice for my subscription, invoice {n}.");
        http.publish(&event(&session, "p", n, &text))
            .await
            .expect("publish");
    }
    let mut silent = event(&session, "p", EVENTS, "");
    silent.text = None;
    http.publish(&silent).await.expect("publish without text");
    let (mut events, mut enriched) = (0, 0);
    while events < EVENTS || enriched == 0 {
        let frame = next_frame(&mut ws).await;
        match frame["op"].as_str() {
            Some("event") => events += 1,
            Some("enriched") => enriched += 1,
            _ => panic!("unexpected frame {frame}"),
        }
    }

    // A tenant over its quota: refused with 429 rate_limited.
    let noisy = SessionKey::parse_parts(&unique("noisy"), "planner", "s").expect("session");
    let mut refused = 0;
    for n in 0..40 {
        let mut spam = event(&noisy, "n", n, "");
        spam.text = None;
        match http.publish(&spam).await {
            Ok(_) => {}
            Err(ClientError::Http { status: 429, .. }) => refused += 1,
            Err(err) => panic!("publish {n} of the noisy tenant: {err}"),
        }
    }
    assert!(refused > 0, "the noisy tenant was never refused");

    // A task through the work queue: enqueued, claimed, completed.
    let tenant = session.tenant.clone();
    let capability = agentwire_protocol::Capability::new("dashboard").expect("capability");
    http.enqueue(&agentwire_client::NewTask::new(
        tenant.clone(),
        capability.clone(),
    ))
    .await
    .expect("enqueue");
    let claimed = http
        .claim(&tenant, std::slice::from_ref(&capability), 1, None, None)
        .await
        .expect("claim");
    let task = claimed.first().expect("the task is claimed");
    http.complete(
        &tenant,
        &task.id,
        task.lease_id.as_deref().expect("lease"),
        None,
    )
    .await
    .expect("complete");

    // Both targets are scraped.
    let up = wait_until(LIMIT, "both targets up", || async {
        let up = prometheus
            .query("up == 1")
            .await
            .map_err(|e| e.to_string())?;
        if up.len() == 2 {
            Ok(up)
        } else {
            Err(format!("up: {up:?}"))
        }
    })
    .await;
    assert_eq!(up.len(), 2);

    // Every panel's query returns a series.
    for (title, expr) in &queries {
        wait_until(
            LIMIT,
            &format!("panel {title:?} to show data for {expr}"),
            || async {
                let series = prometheus.query(expr).await.map_err(|e| e.to_string())?;
                if series.is_empty() {
                    Err("no series".to_owned())
                } else {
                    Ok(series)
                }
            },
        )
        .await;
    }

    // Every metric a panel names is one a service exports.
    let exported: Vec<String> = prometheus
        .metric_names()
        .await
        .expect("metric names")
        .into_iter()
        .filter(|name| name.starts_with("agentwire_"))
        .collect();
    for (title, expr) in &queries {
        for name in promql::metric_names(expr) {
            assert!(
                exported.contains(&name),
                "panel {title:?} names {name}, which no service exports; exported: {exported:?}"
            );
        }
    }

    // Every rule evaluates without error against the services' series.
    let rules = wait_until(LIMIT, "every rule evaluated", || async {
        let rules = prometheus.rules().await.map_err(|e| e.to_string())?;
        match rules.iter().find(|r| r.health == "unknown") {
            None if !rules.is_empty() => Ok(rules),
            _ => Err(format!("{rules:?}")),
        }
    })
    .await;
    let failing: Vec<_> = rules.iter().filter(|r| r.health != "ok").collect();
    assert!(failing.is_empty(), "rules failing: {failing:?}");

    enriching.stop().await;
}
