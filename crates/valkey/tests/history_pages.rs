//! Window reads bounded by bytes as well as by count (`lua/read.lua`), on a real Valkey:
//! large events make short pages, every page makes progress, and paging with the last offset
//! as the cursor returns every event once.

use agentwire_protocol::{Offset, SessionKey};
use agentwire_test_support::{TestEnv, unique};
use agentwire_valkey::{Append, HistorySettings, HistoryStore};

#[tokio::test]
async fn pages_stop_at_the_byte_budget_and_paging_loses_nothing() {
    let env = TestEnv::from_env();
    let store = HistoryStore::connect(&env.valkey_url, HistorySettings::default())
        .await
        .expect("connect");
    let session: SessionKey = format!("{}:planner:big", unique("t")).parse().expect("key");
    let topic = unique("events");
    let events: Vec<(Offset, String)> = (0..10u64)
        .map(|i| {
            (
                Offset(i * 3),
                format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(100_000)),
            )
        })
        .collect();
    let appends: Vec<Append<'_>> = events
        .iter()
        .map(|(offset, json)| Append {
            session: &session,
            topic: &topic,
            partition: 0,
            offset: *offset,
            event_json: json,
            expected: None,
            meta: "",
        })
        .collect();
    assert_eq!(
        store.append_batch(&appends).await.expect("append").written,
        10
    );

    // About 100 KB each: a 250 KB budget holds two.
    let first = store
        .read_page(&session, None, 1000, 250_000)
        .await
        .expect("read");
    assert_eq!(first.entries.len(), 2, "two events fit the budget");
    assert!(first.more, "the page stopped at the budget");

    // A budget smaller than one event still returns that event.
    let tiny = store
        .read_page(&session, None, 1000, 10)
        .await
        .expect("read");
    assert_eq!(tiny.entries.len(), 1);
    assert!(tiny.more);

    let mut cursor = None;
    let mut seen = Vec::new();
    loop {
        let page = store
            .read_page(&session, cursor, 1000, 250_000)
            .await
            .expect("read");
        assert!(page.entries.len() <= 2, "{} entries", page.entries.len());
        seen.extend(page.entries.iter().cloned());
        cursor = page.entries.last().map(|(o, _)| *o).or(cursor);
        if !page.more {
            break;
        }
        assert!(seen.len() <= events.len(), "paging does not end");
    }
    assert_eq!(seen, events, "every event once, in order");

    // A count bound is a possible "more" too; an unbounded read has none.
    let counted = store
        .read_page(&session, None, 3, usize::MAX)
        .await
        .expect("read");
    assert_eq!((counted.entries.len(), counted.more), (3, true));
    let all = store.read_after(&session, None, 1000).await.expect("read");
    assert_eq!((all.entries.len(), all.more), (10, false));
}
