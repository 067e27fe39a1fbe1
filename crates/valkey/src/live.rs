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

/// Parses a channel message `<offset>\n<event json>` (see `lua/append.lua`).
pub fn parse_message(channel: &str, payload: &[u8]) -> Option<LiveMessage> {
    let session = keys::session_of_channel(channel)?;
    let text = std::str::from_utf8(payload).ok()?;
    let (offset, json) = text.split_once('\n')?;
    Some(LiveMessage {
        session,
        offset: Offset(offset.parse().ok()?),
        event_json: json.to_owned(),
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
}

impl LiveStream {
    /// The next announcement; `None` once the connection is lost (the caller reconnects and
    /// treats every followed session as possibly behind).
    pub async fn next(&mut self) -> Option<LiveMessage> {
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
        assert_eq!(parsed.offset, Offset(42));
        assert_eq!(parsed.event_json, "{\"x\":\"a\nb\"}");
        assert_eq!(parse_message("aw:{t:a:s}:ch", b"nan\n{}"), None);
        assert_eq!(parse_message("elsewhere", b"1\n{}"), None);
    }
}
