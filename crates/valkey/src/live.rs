//! Live announcements of new events: one Valkey pub/sub connection per gateway process,
//! shared by all its WebSocket connections (the gateway's hub multiplexes it).
//!
//! On a standalone Valkey this is classic `SUBSCRIBE`/`PUBLISH`. On a Valkey Cluster session
//! channels use sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`): a channel carries its session's
//! hash tag, so an announcement travels only within the shard that holds the session, and
//! adding shards adds pub/sub capacity. redis-rs 1.8 offers `SSUBSCRIBE` on its cluster
//! client (RESP3 pushes), which also resubscribes on its own after reconnects and topology
//! changes; since messages published meanwhile are missed, this feed reports any dropped node
//! connection or subscription as a lost connection and the caller resynchronises.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use agentwire_protocol::{Offset, SessionKey};
use futures::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use crate::connection::ValkeyUrl;
use crate::error::ValkeyError;
use crate::keys;

/// A new event announced on a session's channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveMessage {
    pub session: SessionKey,
    pub offset: Offset,
    pub event_json: String,
    pub meta: LiveMeta,
}

/// What an announcement carries besides the event (never stored in the window): the trace
/// context of the relay's span, and when the record was appended to the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveMeta {
    /// W3C `traceparent` of the relay's span for this record.
    pub traceparent: Option<String>,
    /// The Kafka record's timestamp, in milliseconds since the epoch.
    pub appended_ms: Option<i64>,
}

impl LiveMeta {
    /// The form that follows the offset on an announcement's first line: space-separated
    /// `t=<traceparent>` and `ts=<milliseconds>`; empty when there is neither.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(tp) = self
            .traceparent
            .as_deref()
            .filter(|t| !t.contains(char::is_whitespace))
        {
            out.push_str("t=");
            out.push_str(tp);
        }
        if let Some(ms) = self.appended_ms {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("ts={ms}"));
        }
        out
    }

    /// Reads [`encode`](Self::encode)'s form; unknown members are skipped.
    pub fn decode(text: &str) -> Self {
        let mut meta = LiveMeta::default();
        for member in text.split_ascii_whitespace() {
            match member.split_once('=') {
                Some(("t", tp)) => meta.traceparent = Some(tp.to_owned()),
                Some(("ts", ms)) => meta.appended_ms = ms.parse().ok(),
                _ => {}
            }
        }
        meta
    }
}

/// An enrichment announced on a session's channel (see `lua/annotate.lua`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveAnnotation {
    pub session: SessionKey,
    /// The annotated event's offset.
    pub offset: Offset,
    /// The `{"op":"enriched",…}` frame.
    pub json: String,
    pub meta: LiveMeta,
}

/// An ephemeral message published on a session's channel: never stored, no offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveEphemeral {
    pub session: SessionKey,
    pub event_json: String,
}

/// What arrives on a session channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announcement {
    Event(LiveMessage),
    Annotation(LiveAnnotation),
    Ephemeral(LiveEphemeral),
}

/// The channel message of an ephemeral event.
pub fn ephemeral_message(event_json: &str) -> String {
    format!("e\n{event_json}")
}

/// Parses a channel message: `<offset>\n<event json>` (`lua/append.lua`),
/// `a\n<annotation json>` (`lua/annotate.lua`) or `e\n<event json>` ([`ephemeral_message`]).
pub fn parse_message(channel: &str, payload: &[u8]) -> Option<Announcement> {
    let session = keys::session_of_channel(channel)?;
    let text = std::str::from_utf8(payload).ok()?;
    let (head, json) = text.split_once('\n')?;
    if head == "e" {
        return Some(Announcement::Ephemeral(LiveEphemeral {
            session,
            event_json: json.to_owned(),
        }));
    }
    let (head, meta) = head.split_once(' ').unwrap_or((head, ""));
    if head == "a" {
        #[derive(serde::Deserialize)]
        struct Head {
            offset: Offset,
        }
        let parsed: Head = serde_json::from_str(json).ok()?;
        return Some(Announcement::Annotation(LiveAnnotation {
            session,
            offset: parsed.offset,
            json: json.to_owned(),
            meta: LiveMeta::decode(meta),
        }));
    }
    let offset = head;
    Some(Announcement::Event(LiveMessage {
        session,
        offset: Offset(offset.parse().ok()?),
        event_json: json.to_owned(),
        meta: LiveMeta::decode(meta),
    }))
}

/// Parses a label-feed message (`a\n<annotation json>`, see `lua/annotate.lua`); the
/// session and offset come from the annotation itself.
pub fn parse_label_message(payload: &[u8]) -> Option<LiveAnnotation> {
    #[derive(serde::Deserialize)]
    struct Head {
        session: SessionKey,
        offset: Offset,
    }
    let (head, json) = std::str::from_utf8(payload).ok()?.split_once('\n')?;
    let meta = match head.split_once(' ') {
        Some(("a", meta)) => meta,
        None if head == "a" => "",
        _ => return None,
    };
    let parsed: Head = serde_json::from_str(json).ok()?;
    Some(LiveAnnotation {
        session: parsed.session,
        offset: parsed.offset,
        json: json.to_owned(),
        meta: LiveMeta::decode(meta),
    })
}

/// Adds and removes session subscriptions on the shared connection.
#[derive(Clone)]
pub struct LiveSubscriptions {
    inner: Subscriptions,
}

#[derive(Clone)]
enum Subscriptions {
    /// A standalone Valkey: classic `SUBSCRIBE` on a RESP2 pub/sub connection.
    Single(PubSubSink),
    /// A cluster: `SSUBSCRIBE` for session channels (sharded: each on its slot's node),
    /// classic `SUBSCRIBE` for label feeds, over the cluster client's RESP3 connections.
    Cluster {
        conn: ClusterConnection,
        tracked: Arc<Mutex<Tracked>>,
    },
}

/// What a cluster feed asked for, to tell a subscription Valkey dropped (its slot moved to
/// another node) from one this process ended.
#[derive(Debug, Default)]
struct Tracked {
    wanted: HashSet<String>,
    /// Unsubscribe confirmations still to come, by channel.
    ending: HashMap<String, u32>,
}

impl std::fmt::Debug for LiveSubscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSubscriptions").finish_non_exhaustive()
    }
}

/// The incoming side of the shared connection.
pub struct LiveStream {
    inner: Stream,
}

enum Stream {
    Single(PubSubStream),
    Cluster {
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        tracked: Arc<Mutex<Tracked>>,
        /// Keeps the cluster connection (and so its pushes) alive as long as the stream.
        _conn: ClusterConnection,
    },
}

impl std::fmt::Debug for LiveStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveStream").finish_non_exhaustive()
    }
}

/// Opens the shared pub/sub connection to the Valkey or cluster `url` names.
pub async fn connect(url: &str) -> Result<(LiveSubscriptions, LiveStream), ValkeyError> {
    match ValkeyUrl::parse(url)? {
        ValkeyUrl::Single(url) => {
            let client = redis::Client::open(url)?;
            let (sink, stream) = client.get_async_pubsub().await?.split();
            Ok((
                LiveSubscriptions {
                    inner: Subscriptions::Single(sink),
                },
                LiveStream {
                    inner: Stream::Single(stream),
                },
            ))
        }
        ValkeyUrl::Cluster(seeds) => {
            let (sender, pushes) = mpsc::unbounded_channel();
            let conn = ValkeyUrl::cluster_builder(&seeds)
                .push_sender(sender)
                .build()?
                .get_async_connection()
                .await?;
            let tracked = Arc::new(Mutex::new(Tracked::default()));
            Ok((
                LiveSubscriptions {
                    inner: Subscriptions::Cluster {
                        conn: conn.clone(),
                        tracked: tracked.clone(),
                    },
                },
                LiveStream {
                    inner: Stream::Cluster {
                        pushes,
                        tracked,
                        _conn: conn,
                    },
                },
            ))
        }
    }
}

fn lock(tracked: &Mutex<Tracked>) -> std::sync::MutexGuard<'_, Tracked> {
    tracked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LiveSubscriptions {
    /// Subscribes to a session's channel; returns once Valkey confirmed it.
    pub async fn subscribe(&mut self, session: &SessionKey) -> Result<(), ValkeyError> {
        let channel = keys::channel(session);
        match &mut self.inner {
            Subscriptions::Single(sink) => Ok(sink.subscribe(channel).await?),
            Subscriptions::Cluster { conn, tracked } => {
                lock(tracked).wanted.insert(channel.clone());
                Ok(conn.ssubscribe(channel).await?)
            }
        }
    }

    pub async fn unsubscribe(&mut self, session: &SessionKey) -> Result<(), ValkeyError> {
        let channel = keys::channel(session);
        match &mut self.inner {
            Subscriptions::Single(sink) => Ok(sink.unsubscribe(channel).await?),
            Subscriptions::Cluster { conn, tracked } => {
                end(tracked, &channel);
                Ok(conn.sunsubscribe(channel).await?)
            }
        }
    }

    /// Subscribes to any channel by name (label feeds: [`keys::label_channel`]), with
    /// classic pub/sub.
    pub async fn subscribe_channel(&mut self, channel: &str) -> Result<(), ValkeyError> {
        match &mut self.inner {
            Subscriptions::Single(sink) => Ok(sink.subscribe(channel).await?),
            Subscriptions::Cluster { conn, tracked } => {
                lock(tracked).wanted.insert(channel.to_owned());
                Ok(conn.subscribe(channel).await?)
            }
        }
    }

    pub async fn unsubscribe_channel(&mut self, channel: &str) -> Result<(), ValkeyError> {
        match &mut self.inner {
            Subscriptions::Single(sink) => Ok(sink.unsubscribe(channel).await?),
            Subscriptions::Cluster { conn, tracked } => {
                end(tracked, channel);
                Ok(conn.unsubscribe(channel).await?)
            }
        }
    }
}

/// Records that this process ends its subscription to `channel`.
fn end(tracked: &Mutex<Tracked>, channel: &str) {
    let mut tracked = lock(tracked);
    tracked.wanted.remove(channel);
    *tracked.ending.entry(channel.to_owned()).or_default() += 1;
}

impl LiveStream {
    /// The next message as `(channel, payload)`, for feeds that parse their own messages;
    /// `None` once the connection is lost (on a cluster: once any node's connection dropped,
    /// or Valkey ended a subscription this process still wants, as when a slot moves). The
    /// caller reconnects, subscribes again and treats what it follows as possibly behind.
    pub async fn next_raw(&mut self) -> Option<(String, Vec<u8>)> {
        match &mut self.inner {
            Stream::Single(stream) => {
                let msg = stream.next().await?;
                Some((
                    msg.get_channel_name().to_owned(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            Stream::Cluster {
                pushes, tracked, ..
            } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let [Value::BulkString(channel), Value::BulkString(payload), ..] =
                            push.data.as_slice()
                        {
                            return Some((
                                String::from_utf8_lossy(channel).into_owned(),
                                payload.clone(),
                            ));
                        }
                    }
                    PushKind::Disconnection => {
                        tracing::warn!("a valkey cluster node connection dropped");
                        return None;
                    }
                    PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                        let Some(Value::BulkString(channel)) = push.data.first() else {
                            continue;
                        };
                        let channel = String::from_utf8_lossy(channel).into_owned();
                        let mut tracked = lock(tracked);
                        if let Some(pending) = tracked.ending.get_mut(&channel) {
                            *pending -= 1;
                            if *pending == 0 {
                                tracked.ending.remove(&channel);
                            }
                        } else if tracked.wanted.contains(&channel) {
                            tracing::warn!(%channel, "valkey ended a subscription (its slot moved?)");
                            return None;
                        }
                    }
                    _ => {}
                }
            },
        }
    }

    /// The next announcement; `None` once the connection is lost (see [`Self::next_raw`]).
    pub async fn next(&mut self) -> Option<Announcement> {
        loop {
            let (channel, payload) = self.next_raw().await?;
            match parse_message(&channel, &payload) {
                Some(live) => return Some(live),
                None => tracing::warn!(%channel, "ignoring a malformed live message"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_offset_then_event() {
        let s: SessionKey = "t:a:s".parse().expect("key");
        let parsed = parse_message(&keys::channel(&s), b"42\n{\"x\":\"a\nb\"}").expect("parse");
        let Announcement::Event(parsed) = parsed else {
            panic!("not an event: {parsed:?}")
        };
        assert_eq!(parsed.offset, Offset(42));
        assert_eq!(parsed.event_json, "{\"x\":\"a\nb\"}");
        assert_eq!(parse_message("aw:{t:a:s}:ch", b"nan\n{}"), None);
        assert_eq!(parse_message("elsewhere", b"1\n{}"), None);
    }

    #[test]
    fn label_messages_name_their_session() {
        let json = r#"{"op":"enriched","session":"t:a:s","offset":9,"labels":[]}"#;
        let parsed = parse_label_message(format!("a\n{json}").as_bytes()).expect("parse");
        assert_eq!(parsed.offset, Offset(9));
        assert_eq!(parsed.session.to_string(), "t:a:s");
        assert_eq!(parse_label_message(b"9\n{}"), None);
    }

    #[test]
    fn annotations_carry_their_source_offset() {
        let s: SessionKey = "t:a:s".parse().expect("key");
        let json = r#"{"op":"enriched","session":"t:a:s","offset":7,"labels":[]}"#;
        let payload = format!("a\n{json}");
        let parsed = parse_message(&keys::channel(&s), payload.as_bytes()).expect("parse");
        assert_eq!(
            parsed,
            Announcement::Annotation(LiveAnnotation {
                session: s,
                offset: Offset(7),
                json: json.to_owned(),
                meta: LiveMeta::default(),
            })
        );
        assert_eq!(parse_message("aw:{t:a:s}:ch", b"a\nnot json"), None);
    }

    #[test]
    fn announcements_carry_their_trace_context_and_append_time() {
        let s: SessionKey = "t:a:s".parse().expect("key");
        let meta = LiveMeta {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            appended_ms: Some(1_790_000_000_123),
        };
        let event = format!("12 {}\n{{\"tenant\":\"t\"}}", meta.encode());
        match parse_message(&keys::channel(&s), event.as_bytes()) {
            Some(Announcement::Event(m)) => {
                assert_eq!((m.offset, &m.meta), (Offset(12), &meta));
                assert_eq!(m.event_json, "{\"tenant\":\"t\"}");
            }
            other => panic!("not an event: {other:?}"),
        }
        let json = r#"{"op":"enriched","session":"t:a:s","offset":7,"labels":[]}"#;
        let labelled = format!("a {}\n{json}", meta.encode());
        let parsed = parse_label_message(labelled.as_bytes()).expect("label message");
        assert_eq!((parsed.offset, parsed.meta), (Offset(7), meta.clone()));
        // Unknown members are skipped; an event without any keeps parsing.
        assert_eq!(LiveMeta::decode("x=1 ts=5").appended_ms, Some(5));
        assert_eq!(LiveMeta::default().encode(), "");
    }
}
