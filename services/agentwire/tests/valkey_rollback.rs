//! A Valkey that goes back in time (restored from a snapshot, or a lagging replica promoted)
//! loses appends the relay already committed past. The window must not then link over the
//! lost events: resume and history read them from the log.

mod common;

use std::time::Duration;

use agentwire_client::Subscriber;
use agentwire_protocol::{Offset, SessionKey};
use agentwire_test_support::wait_until;
use agentwire_valkey::{HistorySettings, HistoryStore, keys};
use common::{Stack, event, receive};

async fn publish(stack: &Stack, session: &SessionKey, range: std::ops::Range<u64>) -> Vec<Offset> {
    let mut offsets = Vec::new();
    for n in range {
        let ack = stack
            .http()
            .publish(&event(session, "p", n, &format!("e{n}")))
            .await
            .expect("publish");
        offsets.push(ack.offset);
    }
    offsets
}

async fn window_reaches(store: &HistoryStore, session: &SessionKey, offset: Offset) {
    wait_until(
        Duration::from_secs(30),
        "the relay to write the window",
        || async {
            let latest = store.latest(session).await.map_err(|e| e.to_string())?;
            (latest == Some(offset))
                .then_some(())
                .ok_or(format!("window latest {latest:?}"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lost_to_a_valkey_rollback_are_read_from_the_log() {
    let (stack, _valkey) = Stack::with_own_valkey(1).await;
    let session = stack.session("rolled-back");
    let store = HistoryStore::connect(&stack.env.valkey_url, HistorySettings::default())
        .await
        .expect("valkey");
    let mut valkey = stack.valkey().await;
    let snapshot_keys = [
        keys::history(&session),
        keys::relay_mark(&stack.topic, 0, None),
    ];

    let kept = publish(&stack, &session, 1..4).await;
    window_reaches(&store, &session, kept[2]).await;
    // The snapshot: the window and the relay's mark as they are now.
    let mut snapshot = Vec::new();
    for key in &snapshot_keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(key)
            .query_async(&mut valkey)
            .await
            .expect("dump");
        snapshot.push(dump);
    }
    let lost = publish(&stack, &session, 4..7).await;
    window_reaches(&store, &session, lost[2]).await;

    // Valkey comes back from the snapshot: the three later appends are gone from it.
    for (key, dump) in snapshot_keys.iter().zip(&snapshot) {
        let _: () = redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(dump.as_slice())
            .arg("REPLACE")
            .query_async(&mut valkey)
            .await
            .expect("restore");
    }
    let after = publish(&stack, &session, 7..9).await;
    window_reaches(&store, &session, after[1]).await;

    let want: Vec<Offset> = lost.iter().chain(&after).copied().collect();
    let cursor = kept[2];
    let mut subscriber = Subscriber::connect(&stack.ws_url, vec![(session.clone(), Some(cursor))])
        .await
        .expect("resume");
    let got: Vec<Offset> = receive(&mut subscriber, want.len())
        .await
        .iter()
        .map(|d| d.offset)
        .collect();
    assert_eq!(got, want, "resume after the rollback");
    let history: Vec<Offset> = stack
        .http()
        .history(&session, Some(cursor), None)
        .await
        .expect("history")
        .into_iter()
        .map(|(offset, _)| offset)
        .collect();
    assert_eq!(history, want, "history after the rollback");
}
