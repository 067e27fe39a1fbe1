//! `lua/annotate.lua` and `lua/marks.lua` on a real Valkey: an enrichment is announced once
//! per source offset and version (a replay of the same version is quiet, a new version is
//! announced again), a marker of the single-version format is converted rather than failing,
//! and the marks can be read, set and deleted exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use agentwire_protocol::{Offset, SessionKey};
use agentwire_test_support::{TestEnv, unique};
use agentwire_valkey::{
    Annotated, Annotation, Append, HistorySettings, HistoryStore, UNVERSIONED_MARK, keys,
};
use futures::StreamExt as _;
use redis::AsyncCommands as _;

const TTL: Duration = Duration::from_secs(600);

async fn store() -> HistoryStore {
    let settings = HistorySettings {
        idle_ttl: TTL,
        ..HistorySettings::default()
    };
    HistoryStore::connect(&TestEnv::from_env().valkey_url, settings)
        .await
        .expect("connect")
}

async fn valkey() -> redis::aio::MultiplexedConnection {
    redis::Client::open(TestEnv::from_env().valkey_url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// A session whose window holds events at `offsets`.
async fn session_with_events(store: &HistoryStore, offsets: &[u64]) -> SessionKey {
    let session: SessionKey = format!("{}:planner:marks", unique("t"))
        .parse()
        .expect("key");
    let topic = unique("events");
    let batch: Vec<Append<'_>> = offsets
        .iter()
        .map(|o| Append {
            session: &session,
            topic: &topic,
            partition: 0,
            offset: Offset(*o),
            event_json: "{}",
            expected: None,
            meta: "",
        })
        .collect();
    store.append_batch(&batch).await.expect("append");
    session
}

async fn annotate(
    store: &HistoryStore,
    session: &SessionKey,
    offset: u64,
    version: &str,
) -> Annotated {
    let json = format!(r#"{{"op":"enriched","offset":{offset},"version":"{version}"}}"#);
    store
        .annotate(&Annotation {
            session,
            offset: Offset(offset),
            version,
            unversioned_as: "m",
            json: &json,
            label_channels: &[],
            force: false,
            meta: "",
        })
        .await
        .expect("annotate")
}

fn marks(pairs: &[(&str, u64)]) -> BTreeMap<String, Offset> {
    pairs
        .iter()
        .map(|(v, o)| ((*v).to_owned(), Offset(*o)))
        .collect()
}

async fn ttl_secs(session: &SessionKey) -> i64 {
    valkey()
        .await
        .ttl(keys::annotated(session))
        .await
        .expect("TTL")
}

#[tokio::test]
async fn each_version_annotates_each_event_once() {
    let store = store().await;
    let session = session_with_events(&store, &[3, 5]).await;
    // Announcements really go out (and replays really do not): listen on the channel.
    let client = redis::Client::open(TestEnv::from_env().valkey_url.as_str()).expect("url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(keys::channel(&session))
        .await
        .expect("subscribe");
    let mut messages = pubsub.into_on_message();

    use Annotated::{EventNotYetAnnounced, Published, Replay};
    let steps = [
        (3, "m@1", Published),
        (3, "m@1", Replay),
        (5, "m@1", Published),
        (3, "m@1", Replay),
        (7, "m@1", EventNotYetAnnounced),
        // A redrive with another model or label set: every event once more.
        (3, "m@2", Published),
        (3, "m@2", Replay),
        (5, "m@2", Published),
        (5, "m@1", Replay),
        (5, "m@2", Replay),
        // Last, one more announcement: the channel keeps order, so receiving exactly the
        // expected ones up to this one proves that no replay announced anything.
        (3, "m@3", Published),
    ];
    let mut announced = Vec::new();
    for (offset, version, want) in steps {
        let got = annotate(&store, &session, offset, version).await;
        assert_eq!(got, want, "offset {offset} version {version}");
        if got == Published {
            announced.push(format!(r#""offset":{offset},"version":"{version}""#));
        }
    }
    for want in &announced {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("an announcement in time")
            .expect("the subscription stays open");
        let payload: String = message.get_payload().expect("text");
        assert!(payload.starts_with("a\n"), "{payload}");
        assert!(payload.contains(want.as_str()), "{payload} is not {want}");
    }

    let got = store.annotation_marks(&session).await.expect("marks");
    assert_eq!(got, marks(&[("m@1", 5), ("m@2", 5), ("m@3", 3)]));
    let ttl = ttl_secs(&session).await;
    assert!(ttl > 0 && ttl <= 600, "the idle TTL, got {ttl}");
}

#[tokio::test]
async fn a_marker_from_before_versions_is_converted() {
    let store = store().await;
    let session = session_with_events(&store, &[3, 5, 8]).await;
    let mut conn = valkey().await;
    let _: () = conn
        .set(keys::annotated(&session), "5")
        .await
        .expect("SET an old marker");

    // Read as it is: the unversioned mark.
    let got = store.annotation_marks(&session).await.expect("marks");
    assert_eq!(got, marks(&[(UNVERSIONED_MARK, 5)]));

    // A record of that time (no version: it reads as its model) is still a replay; a new
    // version is announced; the old mark goes on under the model's name.
    assert_eq!(annotate(&store, &session, 5, "m").await, Annotated::Replay);
    assert_eq!(
        annotate(&store, &session, 8, "m").await,
        Annotated::Published
    );
    assert_eq!(
        annotate(&store, &session, 5, "m@new").await,
        Annotated::Published
    );
    let kind: String = redis::cmd("TYPE")
        .arg(keys::annotated(&session))
        .query_async(&mut conn)
        .await
        .expect("TYPE");
    assert_eq!(kind, "hash");
    let got = store.annotation_marks(&session).await.expect("marks");
    assert_eq!(got, marks(&[("m", 8), ("m@new", 5)]));
    assert!(ttl_secs(&session).await > 0, "the converted marker expires");

    // A version first annotated on a converted marker.
    let fresh = session_with_events(&store, &[2]).await;
    let _: () = conn
        .set(keys::annotated(&fresh), "9")
        .await
        .expect("SET an old marker");
    assert_eq!(
        annotate(&store, &fresh, 2, "m@new").await,
        Annotated::Published
    );
    let got = store.annotation_marks(&fresh).await.expect("marks");
    assert_eq!(got, marks(&[("m", 9), ("m@new", 2)]));
}

#[tokio::test]
async fn marks_are_set_and_deleted_exactly() {
    let store = store().await;
    let session = session_with_events(&store, &[3, 5]).await;
    assert!(
        store
            .annotation_marks(&session)
            .await
            .expect("marks")
            .is_empty()
    );

    store
        .set_annotation_mark(&session, "m@1", Offset(9))
        .await
        .expect("set");
    assert_eq!(
        annotate(&store, &session, 5, "m@1").await,
        Annotated::Replay
    );
    // Lowered: the events above it are announced again.
    store
        .set_annotation_mark(&session, "m@1", Offset(3))
        .await
        .expect("set");
    assert_eq!(
        annotate(&store, &session, 3, "m@1").await,
        Annotated::Replay
    );
    assert_eq!(
        annotate(&store, &session, 5, "m@1").await,
        Annotated::Published
    );
    store
        .set_annotation_mark(&session, "m@2", Offset(4))
        .await
        .expect("set");
    let ttl = ttl_secs(&session).await;
    assert!(ttl > 0 && ttl <= 600, "the idle TTL, got {ttl}");
    assert_eq!(
        store.annotation_marks(&session).await.expect("marks"),
        marks(&[("m@1", 5), ("m@2", 4)])
    );

    assert!(
        store
            .delete_annotation_mark(&session, "m@1")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_annotation_mark(&session, "m@1")
            .await
            .expect("delete")
    );
    assert_eq!(
        annotate(&store, &session, 3, "m@1").await,
        Annotated::Published
    );
    assert_eq!(
        store.annotation_marks(&session).await.expect("marks"),
        marks(&[("m@1", 3), ("m@2", 4)])
    );

    // A marker from before versions: replaced by a set, removed as the unversioned mark.
    let mut conn = valkey().await;
    let old = session_with_events(&store, &[1]).await;
    let _: () = conn.set(keys::annotated(&old), "7").await.expect("SET");
    assert!(
        !store
            .delete_annotation_mark(&old, "m@1")
            .await
            .expect("delete")
    );
    assert!(
        store
            .delete_annotation_mark(&old, UNVERSIONED_MARK)
            .await
            .expect("delete")
    );
    let _: () = conn.set(keys::annotated(&old), "7").await.expect("SET");
    store
        .set_annotation_mark(&old, "m@1", Offset(2))
        .await
        .expect("set");
    assert_eq!(
        store.annotation_marks(&old).await.expect("marks"),
        marks(&[("m@1", 2)])
    );
    assert!(ttl_secs(&old).await > 0, "the replaced marker expires");
}
