//! Replay drills (`agentwire drill …`) on the real stack: a clean log verifies and compares
//! clean with exact counts; faults injected into the log and into Valkey are each found by
//! the right command at the right offsets and nothing else; `rebuild` repairs Valkey while
//! subscribers keep receiving every event once; a second rebuild changes nothing; redrive
//! refuses a group with live members; export → import → export round-trips.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agentwire_client::Subscriber;
use agentwire_kafka::LogMessage;
use agentwire_protocol::{Offset, SessionKey};
use agentwire_test_support::wait_until;
use agentwire_valkey::{HistorySettings, HistoryStore, keys};
use common::{LIMIT, Stack, receive, sequenced};
use futures::StreamExt as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

/// Runs `agentwire drill <args>` against the stack; returns its exit status and report.
fn drill(stack: &Stack, args: &[&str]) -> (i32, Value) {
    let dir = tempfile::tempdir().expect("report dir");
    let output = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .arg("drill")
        .args(args)
        .args(["--tenant", &stack.tenant, "--report"])
        .arg(dir.path())
        .env("AGENTWIRE_KAFKA_BROKERS", &stack.env.kafka_brokers)
        .env("AGENTWIRE_TOPIC", &stack.topic)
        .env("AGENTWIRE_VALKEY_URL", &stack.env.valkey_url)
        .env("AGENTWIRE_RELAY_GROUP", &stack.relay_group)
        .env("AGENTWIRE_ENRICHED_TOPIC", &stack.enriched_topic)
        .env("AGENTWIRE_HISTORY_MAXLEN", stack.history_maxlen.to_string())
        .output()
        .expect("run agentwire drill");
    let code = output.status.code().expect("exit code");
    let report = std::fs::read(dir.path().join("report.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| {
            panic!(
                "drill {args:?} wrote no report (exit {code}): {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
    (code, report)
}

/// `kind → [(partition, offset, first_offset)]` of every finding (the report lists all of
/// them: the tests stay under `--max-findings`).
fn findings(report: &Value) -> BTreeMap<String, Vec<(i64, i64, i64)>> {
    let mut out = BTreeMap::new();
    for (kind, set) in report["findings"].as_object().expect("findings") {
        assert_eq!(
            set["total"].as_u64(),
            Some(set["first"].as_array().map_or(0, Vec::len) as u64),
            "every {kind} finding is listed"
        );
        let mut list: Vec<(i64, i64, i64)> = set["first"]
            .as_array()
            .expect("first")
            .iter()
            .map(|f| {
                (
                    f["partition"].as_i64().unwrap_or(-1),
                    f["offset"].as_i64().unwrap_or(-1),
                    f["first_offset"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        list.sort_unstable();
        out.insert(kind.clone(), list);
    }
    out
}

/// Publishes `per_producer` sequenced events for each producer, spread over `sessions`,
/// producers in parallel (each in order); returns how many.
async fn publish(
    stack: &Stack,
    sessions: &[SessionKey],
    producers: usize,
    per_producer: u64,
) -> u64 {
    futures::stream::iter(0..producers)
        .map(|p| {
            let http = stack.http();
            let sessions = sessions.to_vec();
            async move {
                for seq in 1..=per_producer {
                    let session = &sessions[(p + seq as usize) % sessions.len()];
                    let event =
                        sequenced(session, &format!("p{p}"), 0, seq, &format!("p{p} s{seq}"));
                    http.publish(&event).await.expect("publish");
                }
            }
        })
        .buffer_unordered(producers)
        .collect::<Vec<()>>()
        .await;
    producers as u64 * per_producer
}

/// Waits until the relay's group committed the end of every partition.
async fn relayed(stack: &Stack, partitions: i32) {
    let settings = stack.kafka_settings();
    wait_until(LIMIT, "the relay to commit the whole log", || async {
        for partition in 0..partitions {
            let (_, high) = agentwire_kafka::watermarks(&settings, &stack.topic, partition)
                .await
                .map_err(|e| e.to_string())?;
            let committed = agentwire_kafka::committed_offsets(
                &settings,
                &stack.relay_group,
                &stack.topic,
                &[partition],
            )
            .await
            .map_err(|e| e.to_string())?;
            let at = committed
                .get(&partition)
                .copied()
                .flatten()
                .map_or(0, |o| o.0);
            if at < u64::try_from(high).unwrap_or(0) {
                return Err(format!("partition {partition}: committed {at} of {high}"));
            }
        }
        Ok(())
    })
    .await;
}

fn raw_producer(stack: &Stack) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.env.kafka_brokers)
        .create()
        .expect("raw producer")
}

/// Appends a record straight to the log, bypassing the gateway; returns its offset.
async fn append_raw(producer: &FutureProducer, stack: &Stack, key: &str, value: &[u8]) -> i64 {
    let delivered = producer
        .send(
            FutureRecord::to(&stack.topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .expect("raw append");
    delivered.offset
}

type Entries = Vec<(String, Vec<String>)>;

/// Rewrites a session's window through `change` (stream ids cannot be inserted below the top,
/// so a tampered window is written whole again).
async fn tamper(stack: &Stack, session: &SessionKey, change: impl FnOnce(&mut Entries)) {
    let mut valkey = stack.valkey().await;
    let key = keys::history(session);
    let mut entries: Entries = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut valkey)
        .await
        .expect("xrange");
    change(&mut entries);
    entries.sort_by_key(|(id, _)| keys::offset_of_entry_id(id));
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("DEL").arg(&key).ignore();
    for (id, fields) in &entries {
        pipe.cmd("XADD").arg(&key).arg(id).arg(fields).ignore();
    }
    let () = pipe.query_async(&mut valkey).await.expect("rewrite window");
}

fn offsets_of(log: &BTreeMap<String, Vec<LogMessage>>, session: &SessionKey) -> Vec<Offset> {
    log.get(&session.to_string())
        .map(|records| records.iter().map(|r| r.offset).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_log_verifies_and_compares_clean_with_exact_counts() {
    let stack = Stack::start(4).await;
    let sessions: Vec<SessionKey> = (0..60).map(|i| stack.session(&format!("s{i}"))).collect();
    let published = publish(&stack, &sessions, 12, 250).await;
    relayed(&stack, 4).await;

    let (code, report) = drill(&stack, &["verify", "--with-valkey"]);
    assert_eq!(findings(&report), BTreeMap::new(), "a clean log: {report}");
    assert_eq!(code, 0);
    assert_eq!(report["records_read"].as_u64(), Some(published));
    let tenant = &report["tenants"][&stack.tenant];
    assert_eq!(tenant["records"].as_u64(), Some(published));
    assert_eq!(tenant["sessions"].as_u64(), Some(60));
    assert_eq!(tenant["types"]["agent.message"].as_u64(), Some(published));
    let per_session: u64 = report["sessions"]
        .as_object()
        .expect("sessions")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(per_session, published);

    let (code, report) = drill(&stack, &["compare"]);
    assert_eq!((code, findings(&report)), (0, BTreeMap::new()), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_are_found_and_rebuild_repairs_valkey_under_live_traffic() {
    let (stack, _valkey) = Stack::with_own_valkey(1).await;
    let sessions: Vec<SessionKey> = (0..10).map(|i| stack.session(&format!("f{i}"))).collect();
    let follows = sessions.iter().map(|s| (s.clone(), None)).collect();
    let mut subscriber = Subscriber::connect(&stack.ws_url, follows)
        .await
        .expect("subscriber");
    let mut expected_events = publish(&stack, &sessions, 3, 100).await as usize;

    // Faults in the log, appended around the gateway.
    let raw = raw_producer(&stack);
    let log = stack.log_by_key(1).await;
    let victim = &log[&sessions[0].to_string()][5];
    let original = victim.offset.0 as i64;
    let duplicate = append_raw(
        &raw,
        &stack,
        &sessions[0].to_string(),
        victim.value.as_deref().expect("value"),
    )
    .await;
    let gap_session = &sessions[4];
    let mut gap_offsets = Vec::new();
    for seq in [1, 2, 4] {
        let mut event = sequenced(gap_session, "raw-gap", 0, seq, "raw");
        event.id = Some(uuid::Uuid::now_v7());
        let json = agentwire_protocol::cloudevents::to_json(&event);
        gap_offsets.push(append_raw(&raw, &stack, &gap_session.to_string(), json.as_bytes()).await);
    }
    let garbage = append_raw(&raw, &stack, &sessions[5].to_string(), b"{not an event").await;
    expected_events += 5;
    relayed(&stack, 1).await;

    let (code, report) = drill(&stack, &["verify"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        findings(&report),
        BTreeMap::from([
            (
                "duplicate_event_id".to_owned(),
                vec![(0, duplicate, original)]
            ),
            (
                "duplicate_producer_seq".to_owned(),
                vec![(0, duplicate, original)]
            ),
            ("invalid_record".to_owned(), vec![(0, garbage, -1)]),
            (
                "producer_seq_gap".to_owned(),
                vec![(0, gap_offsets[2], gap_offsets[1])]
            ),
        ]),
        "{report}"
    );

    // Faults in Valkey.
    let log = stack.log_by_key(1).await;
    let missing = offsets_of(&log, &sessions[1])[3];
    tamper(&stack, &sessions[1], |entries| {
        entries.retain(|(id, _)| keys::offset_of_entry_id(id) != Some(missing));
    })
    .await;
    let altered = offsets_of(&log, &sessions[2])[4];
    tamper(&stack, &sessions[2], |entries| {
        for (id, fields) in entries.iter_mut() {
            if keys::offset_of_entry_id(id) == Some(altered) {
                fields[1] = fields[1].replace("p1 s", "p1 TAMPERED s");
                fields[1] = fields[1].replace("p0 s", "p0 TAMPERED s");
                fields[1] = fields[1].replace("p2 s", "p2 TAMPERED s");
            }
        }
    })
    .await;
    let own = offsets_of(&log, &sessions[3]);
    let extra = offsets_of(&log, &sessions[6])
        .into_iter()
        .find(|o| *o > own[2] && *o < own[6])
        .expect("another session's offset inside the window");
    tamper(&stack, &sessions[3], |entries| {
        entries.push((
            keys::entry_id(extra),
            vec![
                "e".into(),
                entries[0].1[1].clone(),
                "p".into(),
                String::new(),
            ],
        ));
    })
    .await;
    let mut valkey = stack.valkey().await;
    let tenant = agentwire_protocol::Tenant::new(stack.tenant.clone()).expect("tenant");
    let p1 = agentwire_protocol::ProducerId::new("p1").expect("producer");
    let _: i64 = redis::cmd("DEL")
        .arg(keys::producer(&tenant, &p1))
        .query_async(&mut valkey)
        .await
        .expect("delete a producer state");
    // An annotation mark ahead of the enrichments in the log (there are none).
    let store = HistoryStore::connect(&stack.env.valkey_url, HistorySettings::default())
        .await
        .expect("valkey");
    store
        .set_annotation_mark(&sessions[7], "model@0badf00d", Offset(999_999))
        .await
        .expect("set a mark");

    let (code, report) = drill(&stack, &["compare"]);
    assert_eq!(code, 1, "{report}");
    let found = findings(&report);
    assert_eq!(
        found.keys().cloned().collect::<Vec<_>>(),
        [
            "annotation_mark_ahead",
            "producer_state_missing",
            "window_entry_differs",
            "window_entry_extra",
            "window_entry_missing"
        ],
        "{report}"
    );
    assert_eq!(found["annotation_mark_ahead"], vec![(-1, 999_999, -1)]);
    assert_eq!(
        found["window_entry_missing"],
        vec![(0, missing.0 as i64, -1)]
    );
    assert_eq!(
        found["window_entry_differs"],
        vec![(0, altered.0 as i64, -1)]
    );
    assert_eq!(found["window_entry_extra"], vec![(0, extra.0 as i64, -1)]);
    // p1's state was deleted; raw-gap never published through a gateway, so it has none.
    let missing_states: Vec<&str> = report["findings"]["producer_state_missing"]["first"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|f| f["detail"].as_str())
        .collect();
    assert_eq!(missing_states.len(), 2, "{missing_states:?}");
    assert!(
        missing_states.iter().any(|d| d.contains("/p1:")),
        "{missing_states:?}"
    );
    assert!(
        missing_states.iter().any(|d| d.contains("/raw-gap:")),
        "{missing_states:?}"
    );

    // A dry run lists the changes, exits 1 for them, and changes nothing.
    let (code, report) = drill(&stack, &["rebuild", "--dry-run"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        report["changes"]["windows to rewrite"].as_u64(),
        Some(3),
        "{report}"
    );
    assert!(
        report["changes"].get("windows rewritten").is_none(),
        "{report}"
    );
    let (code, report) = drill(&stack, &["compare"]);
    assert_eq!((code, findings(&report).len()), (1, 5), "{report}");

    // Rebuild while events keep arriving.
    let live = {
        let http = stack.http();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            for seq in 1..=60u64 {
                let session = &sessions[seq as usize % 4];
                http.publish(&sequenced(session, "live", 0, seq, "during the rebuild"))
                    .await
                    .expect("publish during the rebuild");
            }
        })
    };
    let (code, report) = drill(&stack, &["rebuild"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["changes"]["windows rewritten"].as_u64(),
        Some(3),
        "{report}"
    );
    assert_eq!(
        report["changes"]["producer states repaired"].as_u64(),
        Some(2),
        "{report}"
    );
    assert_eq!(
        report["changes"]["annotation marks set back"].as_u64(),
        Some(1),
        "{report}"
    );
    assert_eq!(
        store.annotation_marks(&sessions[7]).await.expect("marks"),
        BTreeMap::new()
    );
    live.await.expect("live publisher");
    expected_events += 60;
    relayed(&stack, 1).await;

    let (code, report) = drill(&stack, &["compare"]);
    assert_eq!((code, findings(&report)), (0, BTreeMap::new()), "{report}");
    let (code, report) = drill(&stack, &["rebuild"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["changes"]["windows to rewrite"].as_u64(),
        Some(0),
        "{report}"
    );
    assert_eq!(
        report["changes"]["producer states to repair"].as_u64(),
        Some(0),
        "{report}"
    );
    assert_eq!(
        report["changes"]["annotation marks to set back"].as_u64(),
        Some(0),
        "{report}"
    );
    assert!(
        report["changes"].get("windows rewritten").is_none(),
        "{report}"
    );

    // The subscriber got every event of the log once, in order, throughout.
    let got = receive(&mut subscriber, expected_events).await;
    let log = stack.log_by_key(1).await;
    for session in &sessions {
        let delivered: Vec<Offset> = got
            .iter()
            .filter(|d| &d.session == session)
            .map(|d| d.offset)
            .collect();
        assert_eq!(delivered, offsets_of(&log, session), "{session}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_refuses_a_group_with_live_members_then_moves_it() {
    let stack = Stack::start(2).await;
    let sessions: Vec<SessionKey> = (0..4).map(|i| stack.session(&format!("r{i}"))).collect();
    publish(&stack, &sessions, 2, 20).await;
    relayed(&stack, 2).await;
    let settings = stack.kafka_settings();
    let before =
        agentwire_kafka::committed_offsets(&settings, &stack.relay_group, &stack.topic, &[0, 1])
            .await
            .expect("committed");

    // The relay is a live member of its group: refused, nothing moved.
    let status = drill_untenanted(
        &stack,
        &["redrive", "--group", &stack.relay_group, "--from", "0"],
    );
    assert_eq!(status.0, 1, "{}", status.1);
    assert!(status.1.contains("live member"), "{}", status.1);
    let after =
        agentwire_kafka::committed_offsets(&settings, &stack.relay_group, &stack.topic, &[0, 1])
            .await
            .expect("committed");
    assert_eq!(before, after);

    // A group nobody consumes in moves; a dry run does not.
    let group = format!("{}-replay", stack.relay_group);
    let status = drill_untenanted(
        &stack,
        &["redrive", "--group", &group, "--from", "3", "--dry-run"],
    );
    assert_eq!(status.0, 0, "{}", status.1);
    let moved = agentwire_kafka::committed_offsets(&settings, &group, &stack.topic, &[0, 1])
        .await
        .expect("committed");
    assert_eq!(moved, BTreeMap::from([(0, None), (1, None)]));
    let status = drill_untenanted(&stack, &["redrive", "--group", &group, "--from", "3"]);
    assert_eq!(status.0, 0, "{}", status.1);
    let moved = agentwire_kafka::committed_offsets(&settings, &group, &stack.topic, &[0, 1])
        .await
        .expect("committed");
    assert_eq!(
        moved,
        BTreeMap::from([(0, Some(Offset(3))), (1, Some(Offset(3)))])
    );
}

/// Runs a drill without a tenant filter; returns the exit status and everything it printed.
fn drill_untenanted(stack: &Stack, args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .arg("drill")
        .args(args)
        .env("AGENTWIRE_KAFKA_BROKERS", &stack.env.kafka_brokers)
        .env("AGENTWIRE_TOPIC", &stack.topic)
        .output()
        .expect("run agentwire drill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().expect("exit code"), text)
}

/// Exports the stack tenant's records of `topic` to `out`.
fn export_topic(stack: &Stack, topic: &str, out: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args([
            "drill",
            "export",
            "--tenant",
            &stack.tenant,
            "--topic",
            topic,
            "--out",
        ])
        .arg(out)
        .env("AGENTWIRE_KAFKA_BROKERS", &stack.env.kafka_brokers)
        .output()
        .expect("run agentwire drill export");
    assert_eq!(
        output.status.code(),
        Some(0),
        "export {topic}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn without_offsets(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("export")
        .lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).expect("json line");
            v.as_object_mut().expect("object").remove("offset");
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_export_round_trips_and_a_copy_keeps_order_per_session() {
    let stack = Stack::start(2).await;
    let sessions: Vec<SessionKey> = (0..6).map(|i| stack.session(&format!("x{i}"))).collect();
    let published = publish(&stack, &sessions, 3, 30).await;
    let dir = tempfile::tempdir().expect("dir");
    let first = dir.path().join("first.jsonl");
    let (code, _) = drill(&stack, &["export", "--out", first.to_str().expect("path")]);
    assert_eq!(code, 0);
    assert_eq!(without_offsets(&first).len() as u64, published);

    let restored = format!("{}-restored", stack.topic);
    let (code, report) = drill(
        &stack,
        &[
            "import",
            "--in",
            first.to_str().expect("path"),
            "--to-topic",
            &restored,
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["changes"]["records written"].as_u64(),
        Some(published)
    );
    let second = dir.path().join("second.jsonl");
    export_topic(&stack, &restored, &second);
    assert_eq!(without_offsets(&first), without_offsets(&second));

    // redrive --to-topic: the same records per session, in order.
    let copy = format!("{}-copy", stack.topic);
    let (code, report) = drill(&stack, &["redrive", "--to-topic", &copy]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["changes"]["records copied"].as_u64(),
        Some(published)
    );
    let third = dir.path().join("third.jsonl");
    export_topic(&stack, &copy, &third);
    assert_eq!(without_offsets(&first), without_offsets(&third));
}
