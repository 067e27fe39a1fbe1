//! Everything a connection sends, and the one place it is encoded for the wire: JSON text
//! frames or protobuf binary frames, as the client's latest message was. Live publications
//! come prepared (shared bytes, encoded once per process); frames read from history are
//! encoded here, per connection.

use std::sync::Arc;

use agentwire_protocol::frames::event_frame_json;
use agentwire_protocol::{CloseReason, Offset, ServerFrame, SessionKey};
use axum::extract::ws::Message;
use serde_json::value::RawValue;

use crate::fanout::Publication;

/// How the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

/// One thing to send.
#[derive(Debug)]
pub enum Outbound {
    Frame(ServerFrame),
    /// A live publication, prepared once for every connection of this process.
    Shared(Arc<Publication>),
    /// An event read from history.
    Stored {
        session: SessionKey,
        offset: Offset,
        json: String,
    },
    /// A WebSocket ping (the heartbeat).
    Ping,
    /// A work-queue frame (`task`, `task_ack`, or an `error` answering a task op): JSON text
    /// whatever the connection's encoding (task ops are JSON only).
    Text(String),
}

/// Encodes `outbound`; an event or frame that cannot be encoded is an internal error that
/// ends the connection (never what the relay and the gateway produce).
pub fn encode(outbound: Outbound, encoding: Encoding) -> Result<Message, CloseReason> {
    Ok(match (outbound, encoding) {
        (Outbound::Ping, _) => Message::Ping(Default::default()),
        (Outbound::Text(text), _) => Message::text(text),
        (Outbound::Shared(publication), Encoding::Json) => {
            Message::Text(publication.json().clone())
        }
        (Outbound::Shared(publication), Encoding::Protobuf) => Message::Binary(
            publication
                .protobuf()
                .ok_or_else(|| CloseReason::internal("a live publication does not encode"))?
                .clone(),
        ),
        (
            Outbound::Stored {
                session,
                offset,
                json,
            },
            Encoding::Json,
        ) => Message::text(event_frame_json(&session, offset, &json)),
        (
            Outbound::Stored {
                session,
                offset,
                json,
            },
            Encoding::Protobuf,
        ) => {
            let event = RawValue::from_string(json)
                .map_err(|_| CloseReason::internal("a stored event is not JSON"))?;
            let frame = ServerFrame::Event {
                session,
                offset,
                event,
            };
            Message::binary(protobuf(&frame)?)
        }
        (Outbound::Frame(frame), Encoding::Json) => Message::text(frame.to_json()),
        (Outbound::Frame(frame), Encoding::Protobuf) => Message::binary(protobuf(&frame)?),
    })
}

fn protobuf(frame: &ServerFrame) -> Result<Vec<u8>, CloseReason> {
    frame
        .to_protobuf()
        .map_err(|_| CloseReason::internal("a frame does not encode"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::publication::cloud_event;
    use agentwire_protocol::pb;
    use prost::Message as _;

    #[test]
    fn stored_events_encode_as_the_shared_ones_do() {
        let session: SessionKey = "t:a:s".parse().expect("key");
        let json = cloud_event(&session);
        let shared = Arc::new(Publication::event(agentwire_valkey::LiveMessage {
            session: session.clone(),
            offset: Offset(3),
            event_json: json.clone(),
            meta: Default::default(),
        }));
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let stored = Outbound::Stored {
                session: session.clone(),
                offset: Offset(3),
                json: json.clone(),
            };
            let a = encode(stored, encoding).expect("stored");
            let b = encode(Outbound::Shared(shared.clone()), encoding).expect("shared");
            assert_eq!(a, b, "{encoding:?}");
        }
        let Message::Binary(bytes) =
            encode(Outbound::Frame(ServerFrame::Pong), Encoding::Protobuf).expect("pong")
        else {
            panic!("protobuf frames are binary")
        };
        assert!(pb::ServerFrame::decode(bytes).is_ok());
    }
}
