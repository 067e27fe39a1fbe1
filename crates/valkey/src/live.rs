//! Live announcements of new events: one Valkey pub/sub connection per gateway process,
//! shared by all its WebSocket connections (the gateway's hub multiplexes it).
//!
//! redis-rs 1.8 offers `SSUBSCRIBE` only on its cluster client, so on a standalone Valkey
//! this uses classic `SUBSCRIBE`/`PUBLISH`; channel names already carry the session hash tag,
//! so moving to sharded pub/sub on a cluster changes the two verbs only.

use agentwire_protocol::{Offset, SessionKey};
use futures::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};

use crate::error::ValkeyError;
use crate::keys;

/// A new event announced on a session's channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveMessage {
    pub session: SessionKey,
    pub offset: Offset,
    pub event_json: String,
}

/// An enrichment announced on a session's channel (see `lua/annotate.lua`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveAnnotation {
    pub session: SessionKey,
    /// The annotated event's offset.
    pub offset: Offset,
    /// The `{"op":"enriched",…}` frame.
    pub json: String,
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
    if head == "a" {
        #[derive(serde::Deserialize)]
        struct Head {
            offset: Offset,
        }
        let head: Head = serde_json::from_str(json).ok()?;
        return Some(Announcement::Annotation(LiveAnnotation {
            session,
            offset: head.offset,
            json: json.to_owned(),
        }));
    }
    Some(Announcement::Event(LiveMessage {
        session,
        offset: Offset(head.parse().ok()?),
        event_json: json.to_owned(),
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
    let json = std::str::from_utf8(payload).ok()?.strip_prefix("a\n")?;
    let head: Head = serde_json::from_str(json).ok()?;
    Some(LiveAnnotation {
        session: head.session,
        offset: head.offset,
        json: json.to_owned(),
    })
}

/// Adds and removes session subscriptions on the shared connection.
#[derive(Clone)]
pub struct LiveSubscriptions {
    sink: PubSubSink,
}

impl std::fmt::Debug for LiveSubscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSubscriptions").finish_non_exhaustive()
    }
}

/// The incoming side of the shared connection.
pub struct LiveStream {
    stream: PubSubStream,
}

impl std::fmt::Debug for LiveStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveStream").finish_non_exhaustive()
    }
}

/// Opens the shared pub/sub connection.
pub async fn connect(url: &str) -> Result<(LiveSubscriptions, LiveStream), ValkeyError> {
    let client = redis::Client::open(url)?;
    let (sink, stream) = client.get_async_pubsub().await?.split();
    Ok((LiveSubscriptions { sink }, LiveStream { stream }))
}

impl LiveSubscriptions {
    /// Subscribes to a session's channel; returns once Valkey confirmed it.
    pub async fn subscribe(&mut self, session: &SessionKey) -> Result<(), ValkeyError> {
        Ok(self.sink.subscribe(keys::channel(session)).await?)
    }

    pub async fn unsubscribe(&mut self, session: &SessionKey) -> Result<(), ValkeyError> {
        Ok(self.sink.unsubscribe(keys::channel(session)).await?)
    }

    /// Subscribes to any channel by name (label feeds: [`keys::label_channel`]).
    pub async fn subscribe_channel(&mut self, channel: &str) -> Result<(), ValkeyError> {
        Ok(self.sink.subscribe(channel).await?)
    }

    pub async fn unsubscribe_channel(&mut self, channel: &str) -> Result<(), ValkeyError> {
        Ok(self.sink.unsubscribe(channel).await?)
    }
}

impl LiveStream {
    /// The next message as `(channel, payload)`, for feeds that parse their own messages;
    /// `None` once the connection is lost.
    pub async fn next_raw(&mut self) -> Option<(String, Vec<u8>)> {
        let msg = self.stream.next().await?;
        Some((
            msg.get_channel_name().to_owned(),
            msg.get_payload_bytes().to_vec(),
        ))
    }

    /// The next announcement; `None` once the connection is lost (the caller reconnects and
    /// treats every followed session as possibly behind).
    pub async fn next(&mut self) -> Option<Announcement> {
        loop {
            let msg = self.stream.next().await?;
            match parse_message(msg.get_channel_name(), msg.get_payload_bytes()) {
                Some(live) => return Some(live),
                None => tracing::warn!(
                    channel = msg.get_channel_name(),
                    "ignoring a malformed live message"
                ),
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
                json: json.to_owned()
            })
        );
        assert_eq!(parse_message("aw:{t:a:s}:ch", b"a\nnot json"), None);
    }
}
