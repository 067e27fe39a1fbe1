//! A live publication as every connection of this process receives it: its frame is encoded
//! once per wire format (JSON now, protobuf the first time a protobuf connection needs it)
//! and shared as bytes by every connection that gets it.

use std::sync::OnceLock;

use agentwire_protocol::frames::{ephemeral_frame_json, event_frame_json};
use agentwire_protocol::{Offset, ServerFrame, SessionKey};
use agentwire_valkey::{LiveAnnotation, LiveEphemeral, LiveMessage, LiveMeta};
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;

/// What a publication is, which decides how a connection treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A durable event of a followed session, at its log offset.
    Event(Offset),
    /// The enrichment of the followed session's event at this offset (sent after the event).
    Annotation(Offset),
    /// An ephemeral event of a followed session: no offset, sheddable.
    Ephemeral,
    /// An enrichment that arrived on a followed label feed (of any session of the tenant).
    Labelled(Offset),
}

/// One publication, prepared once per process.
#[derive(Debug)]
pub struct Publication {
    pub session: SessionKey,
    pub kind: Kind,
    /// The relay's trace context and the record's append time, from the announcement.
    pub meta: LiveMeta,
    json: Utf8Bytes,
    protobuf: OnceLock<Option<Bytes>>,
}

impl Publication {
    fn new(session: SessionKey, kind: Kind, json: String, meta: LiveMeta) -> Self {
        Self {
            session,
            kind,
            meta,
            json: json.into(),
            protobuf: OnceLock::new(),
        }
    }

    pub fn event(message: LiveMessage) -> Self {
        let json = event_frame_json(&message.session, message.offset, &message.event_json);
        Self::new(
            message.session,
            Kind::Event(message.offset),
            json,
            message.meta,
        )
    }

    pub fn annotation(annotation: LiveAnnotation) -> Self {
        Self::new(
            annotation.session,
            Kind::Annotation(annotation.offset),
            annotation.json,
            annotation.meta,
        )
    }

    pub fn labelled(annotation: LiveAnnotation) -> Self {
        Self::new(
            annotation.session,
            Kind::Labelled(annotation.offset),
            annotation.json,
            annotation.meta,
        )
    }

    pub fn ephemeral(message: LiveEphemeral) -> Self {
        let json = ephemeral_frame_json(&message.session, &message.event_json);
        Self::new(message.session, Kind::Ephemeral, json, LiveMeta::default())
    }

    /// The JSON text frame (shared bytes: cloning is a reference count).
    pub fn json(&self) -> &Utf8Bytes {
        &self.json
    }

    /// The protobuf frame, encoded from the JSON one at the first call; `None` if it does not
    /// decode (never for what the relay and the gateway publish).
    pub fn protobuf(&self) -> Option<&Bytes> {
        self.protobuf
            .get_or_init(|| {
                let frame = ServerFrame::from_json(self.json.as_str()).ok()?;
                frame.to_protobuf().ok().map(Bytes::from)
            })
            .as_ref()
    }
}

/// A stored CloudEvent of `session`, as the gateway writes them (for tests).
#[cfg(test)]
pub(crate) fn cloud_event(session: &SessionKey) -> String {
    let mut event = agentwire_protocol::Event::new(
        session.clone(),
        agentwire_protocol::EventType::new("agent.message").expect("type"),
    );
    event.stamp(std::time::SystemTime::now());
    agentwire_protocol::cloudevents::to_json(&event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_prepared_once_per_encoding() {
        let session: SessionKey = "t:a:s".parse().expect("key");
        let publication = Publication::event(LiveMessage {
            session: session.clone(),
            offset: Offset(7),
            event_json: cloud_event(&session),
            meta: Default::default(),
        });
        assert!(publication.json().as_str().starts_with(r#"{"op":"event""#));
        let first = publication.protobuf().expect("encodes").clone();
        let again = publication.protobuf().expect("encodes");
        assert_eq!(first.as_ptr(), again.as_ptr(), "encoded once, then shared");
        let ephemeral = Publication::ephemeral(LiveEphemeral {
            event_json: cloud_event(&session),
            session,
        });
        assert_eq!(ephemeral.kind, Kind::Ephemeral);
        assert!(ephemeral.protobuf().is_some());
    }
}
