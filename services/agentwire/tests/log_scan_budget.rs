//! A history read the window cannot serve scans the session's Kafka partition; that scan is
//! bounded (issue 11, item 6). A quiet session in a busy partition gets pages that stop after
//! `AGENTWIRE_LOG_SCAN_MAX_RECORDS` examined records, maybe with no event, and a `next_after`
//! past what was scanned; paging on with it returns every event once, and a WebSocket
//! catch-up delivers them all. The records a read may scan are charged to the tenant's
//! log-scan quota: over it the read is refused with 429 and a wait, while other tenants read on.

mod common;

use agentwire_client::Subscriber;
use agentwire_protocol::{Offset, SessionKey};
use agentwire_test_support::{TestEnv, unique};
use common::{Stack, event, receive};
use serde_json::Value;

const SCAN: usize = 40;
const NOISE: u64 = 200;

/// Publishes one event of `session`, `NOISE` events of another session of the same tenant
/// (one partition, so the same partition), then two more of `session`. Returns the offsets of
/// `session`'s events.
async fn quiet_among_noise(stack: &Stack, session: &SessionKey) -> Vec<Offset> {
    let http = stack.http();
    let noisy = stack.session("noisy");
    let mut offsets = vec![
        http.publish(&event(session, "q", 0, "first"))
            .await
            .expect("publish")
            .offset,
    ];
    let noise: Vec<_> = (0..NOISE).map(|i| event(&noisy, "n", i, "noise")).collect();
    for chunk in noise.chunks(100) {
        http.publish_batch(chunk).await.expect("publish noise");
    }
    for n in 1..3 {
        offsets.push(
            http.publish(&event(session, "q", n, "later"))
                .await
                .expect("publish")
                .offset,
        );
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_session_in_a_busy_partition_pages_by_scanned_records() {
    // No relay: no window, so every read after a cursor comes from the log.
    let mut stack =
        Stack::configured(TestEnv::from_env(), 1, |c| c.log_scan_max_records = SCAN).await;
    let session = stack.session("quiet");
    let offsets = quiet_among_noise(&stack, &session).await;

    let http = stack.http();
    let mut cursor = offsets[0];
    let (mut seen, mut pages, mut empty_pages) = (Vec::new(), 0, 0);
    loop {
        let page = http
            .history_page(&session, Some(cursor), Some(1000))
            .await
            .expect("a history page");
        pages += 1;
        seen.extend(page.events.iter().map(|(offset, _)| *offset));
        if !page.more {
            break;
        }
        empty_pages += usize::from(page.events.is_empty());
        let next = page
            .next_after
            .expect("a page with more names where to go on");
        let scanned = next.0 - cursor.0;
        assert!(
            scanned as usize <= SCAN,
            "a page moved the cursor {scanned} records, past the scan bound of {SCAN}"
        );
        cursor = next;
        assert!(pages < 100, "paging does not end");
    }
    println!("{pages} pages ({empty_pages} without an event) for {NOISE} records of noise");
    assert_eq!(seen, offsets[1..], "every later event once, in order");
    assert!(
        pages as u64 > NOISE / SCAN as u64,
        "{pages} pages: the scan bound did not split the read"
    );
    assert!(
        empty_pages > 0,
        "the noise alone makes pages without events"
    );
    let scanned = stack
        .metric("agentwire_gateway_history_log_records_scanned_total")
        .await
        .expect("the scanned-records metric");
    assert!(
        scanned >= NOISE as f64,
        "{scanned} records counted as scanned"
    );

    // A WebSocket catch-up through the same noise delivers both events, then live ones.
    let mut subscriber =
        Subscriber::connect(&stack.ws_url, vec![(session.clone(), Some(offsets[0]))])
            .await
            .expect("subscribe");
    let caught_up: Vec<Offset> = receive(&mut subscriber, 2)
        .await
        .iter()
        .map(|d| d.offset)
        .collect();
    assert_eq!(caught_up, offsets[1..]);
    // With the relay, live events follow, and the relayed earlier ones are not repeated.
    stack.spawn_relay();
    let live = http
        .publish(&event(&session, "q", 9, "live"))
        .await
        .expect("publish")
        .offset;
    assert_eq!(receive(&mut subscriber, 1).await[0].offset, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_log_scan_quota_is_told_to_wait() {
    // Each read may scan 40 records; the tenant may scan 100 at once, then 1 a second.
    let stack = Stack::configured(TestEnv::from_env(), 1, |c| {
        c.log_scan_max_records = SCAN;
        c.tenant_log_scan_rate = 1;
        c.tenant_log_scan_burst = 100;
    })
    .await;
    let session = stack.session("scanner");
    let offsets = quiet_among_noise(&stack, &session).await;
    let url = |session: &SessionKey, after: Offset| {
        format!(
            "{}/v1/sessions/{}/{}/{}/events?after={after}",
            stack.http_url, session.tenant, session.agent_type, session.session_id
        )
    };
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut refusal = Value::Null;
    for _ in 0..4 {
        let response = client
            .get(url(&session, offsets[0]))
            .send()
            .await
            .expect("history");
        statuses.push(response.status().as_u16());
        if response.status().as_u16() == 429 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            assert!(
                retry_after.is_some_and(|s| s >= 1),
                "Retry-After: {retry_after:?}"
            );
            refusal = response.json().await.expect("an error body");
        }
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "two reads of 40 fit a burst of 100"
    );
    assert_eq!(refusal["error"]["code"], "rate_limited", "{refusal}");
    assert!(
        refusal["error"]["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1000),
        "{refusal}"
    );

    // Another tenant's reads are charged to its own quota.
    let other = SessionKey::parse_parts(&unique("t"), "planner", "other").expect("session");
    let first = stack
        .http()
        .publish(&event(&other, "o", 0, "first"))
        .await
        .expect("publish")
        .offset;
    let response = client
        .get(url(&other, first))
        .send()
        .await
        .expect("history");
    assert_eq!(response.status().as_u16(), 200, "another tenant reads on");
    // A read the window serves scans nothing from the log and costs nothing.
    let response = client
        .get(format!(
            "{}/v1/sessions/{}/{}/{}/events",
            stack.http_url, session.tenant, session.agent_type, session.session_id
        ))
        .send()
        .await
        .expect("history");
    assert_eq!(
        response.status().as_u16(),
        200,
        "window-only reads are free"
    );
}
