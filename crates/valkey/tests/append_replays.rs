//! `lua/append.lua` on a real Valkey: appending an offset the window already holds is a quiet
//! replay when it is the same record, and a mismatch (the log was reset under the window) when
//! the window holds another record there or lacks that offset inside its range. Nothing is
//! written in either case.

use agentwire_protocol::{Offset, SessionKey};
use agentwire_test_support::{TestEnv, unique};
use agentwire_valkey::{Append, Appended, HistorySettings, HistoryStore};

async fn append(
    store: &HistoryStore,
    session: &SessionKey,
    topic: &str,
    offset: u64,
    json: &str,
) -> Appended {
    let batch = [Append {
        session,
        topic,
        partition: 0,
        offset: Offset(offset),
        event_json: json,
        expected: None,
        meta: "",
    }];
    store.append_batch(&batch).await.expect("append")
}

#[tokio::test]
async fn replays_are_quiet_and_other_records_at_held_offsets_are_mismatches() {
    let env = TestEnv::from_env();
    let store = HistoryStore::connect(&env.valkey_url, HistorySettings::default())
        .await
        .expect("connect");
    let session: SessionKey = format!("{}:planner:replay", unique("t"))
        .parse()
        .expect("key");
    let topic = unique("events");
    for (offset, json) in [(2, r#"{"n":2}"#), (5, r#"{"n":5}"#), (9, r#"{"n":9}"#)] {
        assert_eq!(
            append(&store, &session, &topic, offset, json).await.written,
            1
        );
    }

    // The same record again: a replay, nothing written, nothing reported.
    let replay = append(&store, &session, &topic, 5, r#"{"n":5}"#).await;
    assert_eq!((replay.written, replay.mismatches), (0, 0));
    // Below the window's first entry (trimmed, or never held): nothing to compare with.
    let below = append(&store, &session, &topic, 1, r#"{"other":1}"#).await;
    assert_eq!((below.written, below.mismatches), (0, 0));

    // Another record at a held offset, or one inside the range the window does not hold.
    let other = append(&store, &session, &topic, 5, r#"{"other":5}"#).await;
    assert_eq!((other.written, other.mismatches), (0, 1));
    let missing = append(&store, &session, &topic, 7, r#"{"other":7}"#).await;
    assert_eq!((missing.written, missing.mismatches), (0, 1));

    let window = store.read_after(&session, None, 100).await.expect("read");
    let offsets: Vec<u64> = window.entries.iter().map(|(o, _)| o.0).collect();
    assert_eq!(offsets, [2, 5, 9], "the window is unchanged");
    assert_eq!(window.entries[1].1, r#"{"n":5}"#);
}
