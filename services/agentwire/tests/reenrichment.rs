//! Re-enrichment on the real stack (issue 16, redrive): subscribers get one `enriched` frame
//! per event and enrichment version. The same enrichment delivered again (a redrive by the
//! same model and labels) sends nothing; an enrichment by a new version sends a new frame; a
//! session marker left by a relay from before versions does not stop annotation.
//!
//! The first tests write `agent.enriched` records themselves and let the real relay carry them;
//! the last one re-runs the real enricher's group with `agentwire drill redrive`.
//! Absence is proven by order, never by waiting: the relay carries one partition in order, so
//! a frame for a later record arriving first means the records before it announced nothing.

mod common;

use agentwire_enricher::{ENRICHMENT_JSON, MODEL_ID};
use agentwire_kafka::{EventLog, LogRecord};
use agentwire_protocol::{Enrichment, LabelScore, ModelVersion, Offset, SessionKey, SourceRef};
use agentwire_test_support::{unique, wait_until};
use agentwire_valkey::{HistorySettings, HistoryStore, keys};
use common::enricher::{self, Enricher};
use common::ws::{Ws, next_frame, subscribe};
use common::{LIMIT, Stack, event};
use serde_json::Value;

/// A version as the enricher names it, for a label set of one label.
fn version(label: &str) -> String {
    ModelVersion::default()
        .part("label", label)
        .finish(MODEL_ID)
}

/// An enrichment of the event at `offset`, labelled `label`, by `version` ("" for a record
/// written before versions existed).
fn enrichment(session: &SessionKey, offset: Offset, version: &str, label: &str) -> Enrichment {
    Enrichment {
        session: session.clone(),
        source: SourceRef {
            topic: "agent.events".into(),
            partition: 0,
            offset,
        },
        event_id: None,
        labels: vec![LabelScore {
            label: label.into(),
            score: 0.5,
        }],
        duplicate_of: None,
        duplicate_score: None,
        model: MODEL_ID.into(),
        version: version.into(),
        device: "cpu".into(),
        embedding: Vec::new(),
    }
}

/// Appends `records` to the stack's enriched topic, in order, and waits for the broker.
async fn produce(stack: &Stack, records: &[Enrichment]) {
    let settings = stack.kafka_settings();
    agentwire_kafka::ensure_topic_like(&settings, &stack.topic, &stack.enriched_topic)
        .await
        .expect("the enriched topic");
    let log = EventLog::new(&settings, &stack.enriched_topic).expect("producer");
    let mut acks = Vec::new();
    for record in records {
        let value = serde_json::to_string(record).expect("encode");
        let key = record.session.to_string();
        acks.push(
            log.enqueue(&LogRecord {
                key,
                value,
                content_type: ENRICHMENT_JSON,
                traceparent: None,
                tracestate: None,
            })
            .await
            .expect("enqueue"),
        );
    }
    for ack in acks {
        ack.await.expect("appended");
    }
}

/// A subscriber of a new session of `stack` that received `texts` as events; their offsets.
async fn session_with_events(
    stack: &Stack,
    name: &str,
    texts: &[&str],
) -> (SessionKey, Ws, Vec<Offset>) {
    let session = stack.session(name);
    let mut ws = subscribe(stack, &session).await;
    let http = stack.http();
    let mut offsets = Vec::new();
    for (n, text) in texts.iter().enumerate() {
        let ack = http
            .publish(&event(&session, "p", n as u64 + 1, text))
            .await
            .expect("publish");
        offsets.push(ack.offset);
    }
    for offset in &offsets {
        let frame = next_frame(&mut ws).await;
        assert_eq!(frame["op"], "event", "{frame}");
        assert_eq!(frame["offset"], offset.0, "{frame}");
    }
    (session, ws, offsets)
}

/// The next frame, which must be an annotation: (offset, version, first label).
async fn next_enriched(ws: &mut Ws) -> (Offset, String, String) {
    let frame: Value = next_frame(ws).await;
    assert_eq!(frame["op"], "enriched", "{frame}");
    assert_eq!(frame["model"], MODEL_ID, "{frame}");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        Offset(frame["offset"].as_u64().expect("offset")),
        text(&frame["version"]),
        text(&frame["labels"][0]["label"]),
    )
}

async fn marks(stack: &Stack, session: &SessionKey) -> Vec<(String, Offset)> {
    let store = HistoryStore::connect(&stack.env.valkey_url, HistorySettings::default())
        .await
        .expect("valkey");
    let marks = store.annotation_marks(session).await.expect("marks");
    marks.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_version_is_announced_once_and_a_new_version_again() {
    let stack = Stack::start(1).await;
    let (session, mut ws, offsets) =
        session_with_events(&stack, "redrive", &["charged twice", "the final"]).await;
    let (a, b) = (offsets[0], offsets[1]);
    let (v1, v2, v3) = (version("billing"), version("finance"), version("sports"));

    produce(&stack, &[enrichment(&session, a, &v1, "billing")]).await;
    assert_eq!(
        next_enriched(&mut ws).await,
        (a, v1.clone(), "billing".into())
    );

    // A redrive by the same version: `a` again, then `b` for the first time. Only `b` arrives.
    produce(
        &stack,
        &[
            enrichment(&session, a, &v1, "billing"),
            enrichment(&session, b, &v1, "billing"),
        ],
    )
    .await;
    assert_eq!(
        next_enriched(&mut ws).await,
        (b, v1.clone(), "billing".into())
    );

    // A redrive by a new version (another label set): both events once more, newest labels.
    produce(
        &stack,
        &[
            enrichment(&session, a, &v2, "finance"),
            enrichment(&session, b, &v2, "finance"),
        ],
    )
    .await;
    assert_eq!(
        next_enriched(&mut ws).await,
        (a, v2.clone(), "finance".into())
    );
    assert_eq!(
        next_enriched(&mut ws).await,
        (b, v2.clone(), "finance".into())
    );

    // Both versions redriven again: nothing; then a third version's frame is the next one.
    produce(
        &stack,
        &[
            enrichment(&session, a, &v1, "billing"),
            enrichment(&session, b, &v2, "finance"),
            enrichment(&session, a, &v2, "finance"),
            enrichment(&session, b, &v3, "sports"),
        ],
    )
    .await;
    assert_eq!(
        next_enriched(&mut ws).await,
        (b, v3.clone(), "sports".into())
    );
    assert_eq!(marks(&stack, &session).await, {
        let mut want = vec![(v1, b), (v2, b), (v3, b)];
        want.sort();
        want
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_from_before_versions_does_not_stop_annotation() {
    let stack = Stack::start(1).await;
    let (session, mut ws, offsets) =
        session_with_events(&stack, "upgrade", &["charged twice", "the final"]).await;
    let (a, b) = (offsets[0], offsets[1]);
    // What a relay from before versions left: one plain string, "annotated through `a`".
    let mut valkey = stack.valkey().await;
    let _: () = redis::cmd("SET")
        .arg(keys::annotated(&session))
        .arg(a.0)
        .arg("EX")
        .arg(3600)
        .query_async(&mut valkey)
        .await
        .expect("SET the old marker");

    // Records from before versions (no `version`: they read as their model) still count as
    // replays up to the old mark; a new version annotates `a` again.
    let v1 = version("billing");
    produce(
        &stack,
        &[
            enrichment(&session, a, "", "billing"),
            enrichment(&session, b, "", "billing"),
            enrichment(&session, a, &v1, "finance"),
        ],
    )
    .await;
    assert_eq!(
        next_enriched(&mut ws).await,
        (b, MODEL_ID.to_owned(), "billing".into()),
        "the unversioned record after the old mark, named by its model"
    );
    assert_eq!(
        next_enriched(&mut ws).await,
        (a, v1.clone(), "finance".into())
    );
    let kind: String = redis::cmd("TYPE")
        .arg(keys::annotated(&session))
        .query_async(&mut valkey)
        .await
        .expect("TYPE");
    assert_eq!(kind, "hash", "the old marker was converted");
    assert_eq!(
        marks(&stack, &session).await,
        vec![(MODEL_ID.to_owned(), b), (v1, a)]
    );
}

/// Every record of the enriched topic (one partition) for `session`.
async fn enriched_records(stack: &Stack, session: &SessionKey) -> Vec<Enrichment> {
    let settings = stack.kafka_settings();
    let (low, high) = agentwire_kafka::watermarks(&settings, &stack.enriched_topic, 0)
        .await
        .expect("watermarks");
    let records = agentwire_kafka::read_range(
        &settings,
        &stack.enriched_topic,
        0,
        Offset(u64::try_from(low).unwrap_or(0)),
        Offset(u64::try_from(high).unwrap_or(0)),
        LIMIT,
    )
    .await
    .expect("read enriched");
    records
        .iter()
        .filter_map(|r| serde_json::from_slice::<Enrichment>(r.value.as_deref()?).ok())
        .filter(|e| &e.session == session)
        .collect()
}

/// `agentwire drill redrive --group <group> --from 0` on the stack's topic: its exit status
/// and what it printed.
fn redrive(stack: &Stack, group: &str) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args(["drill", "redrive", "--group", group, "--from", "0"])
        .env("AGENTWIRE_KAFKA_BROKERS", &stack.env.kafka_brokers)
        .env("AGENTWIRE_TOPIC", &stack.topic)
        .output()
        .expect("run agentwire drill redrive");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// Redrives `group` once the broker no longer counts the stopped enricher as a member.
async fn redrive_stopped(stack: &Stack, group: &str) {
    wait_until(
        LIMIT,
        "the redrive of the stopped enricher's group",
        || async {
            let (code, text) = redrive(stack, group);
            (code == 0).then_some(()).ok_or(text)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_of_the_enricher_announces_again_only_under_a_new_version() {
    let stack = Stack::start(1).await;
    let texts = [
        "My credit card was charged twice for the same subscription this month.",
        "The striker scored a hat-trick in the second half of the final.",
    ];
    let (session, mut ws, offsets) = session_with_events(&stack, "enricher", &texts).await;

    let group = unique("enricher");
    let first = enricher::config(&stack, &group);
    let running = Enricher::start(first.clone());
    let (a, version, _) = next_enriched(&mut ws).await;
    let (b, again, _) = next_enriched(&mut ws).await;
    assert_eq!(vec![a, b], offsets);
    assert_eq!(version, again);
    assert!(
        version.starts_with(&format!("{MODEL_ID}@")),
        "a version names its model: {version}"
    );
    // A group with a live member is not moved.
    let (code, text) = redrive(&stack, &group);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("live member"), "{text}");
    running.stop().await;

    // `drill redrive` moves the group back to the start; the same model and labels over the
    // whole range again: new records, no new frames.
    redrive_stopped(&stack, &group).await;
    let running = Enricher::start(enricher::config(&stack, &group));
    let records = wait_until(LIMIT, "the redrive's enrichments in the log", || async {
        let records = enriched_records(&stack, &session).await;
        (records.len() >= 4).then_some(records)
    })
    .await;
    running.stop().await;
    let versions: Vec<&str> = records.iter().map(Enrichment::version).collect();
    assert_eq!(versions, vec![version.as_str(); 4]);

    // Another label threshold is another version: after another redrive every event is
    // annotated once more, and the first frame after the same-version redrive is this one.
    redrive_stopped(&stack, &group).await;
    let changed = agentwire_enricher::EnricherConfig {
        min_score: first.min_score - 0.05,
        ..enricher::config(&stack, &group)
    };
    let running = Enricher::start(changed);
    let (a2, new_version, _) = next_enriched(&mut ws).await;
    let (b2, new_again, _) = next_enriched(&mut ws).await;
    assert_eq!(vec![a2, b2], offsets, "each event once more, in order");
    assert_ne!(new_version, version);
    assert_eq!(new_version, new_again);
    running.stop().await;
    let mut want = vec![(version, b), (new_version, b)];
    want.sort();
    assert_eq!(marks(&stack, &session).await, want);
}
