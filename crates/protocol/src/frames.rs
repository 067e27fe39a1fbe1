//! WebSocket frames of `/v1/ws`: client → server ([`ClientFrame`]) and server → client
//! ([`ServerFrame`]), in JSON (text messages) and protobuf (binary messages).

use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::cloudevents;
use crate::error::{ErrorCode, ProtocolError};
use crate::event::Event;
use crate::ids::{Label, Offset, SessionKey, Tenant};
use crate::pb;

/// Where a session subscription starts: JSON `after` or `"from":"earliest"` (exclusive of
/// each other), protobuf `after` or `from`; neither means only new events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// Only events newer than the session's latest one.
    #[default]
    New,
    /// Events with offsets strictly after this one (a resume).
    After(Offset),
    /// Every event the log still holds, from its first retained offset, then live.
    Earliest,
}

impl Start {
    /// The one value `from` takes.
    pub const EARLIEST: &'static str = "earliest";

    /// Validates a request's `after` and `from` (absent `from`: `None`): any `from` but
    /// `earliest`, and `from` together with `after`, are refused naming `from`.
    pub fn from_parts(after: Option<u64>, from: Option<&str>) -> Result<Start, ProtocolError> {
        match (after, from) {
            (_, Some(from)) if from != Self::EARLIEST => Err(ProtocolError::invalid(
                "from",
                format!(
                    "must be \"{}\" (every event the log still holds), not {from:?}",
                    Self::EARLIEST
                ),
            )),
            (Some(_), Some(_)) => Err(ProtocolError::invalid(
                "from",
                "`from` and `after` exclude each other: resume with `after` or replay with `from`",
            )),
            (None, Some(_)) => Ok(Start::Earliest),
            (Some(after), None) => Ok(Start::After(Offset::cursor(after)?)),
            (None, None) => Ok(Start::New),
        }
    }

    /// The resume cursor, for [`Start::After`].
    pub fn after(self) -> Option<Offset> {
        match self {
            Start::After(after) => Some(after),
            Start::New | Start::Earliest => None,
        }
    }

    /// The `from` it is sent with, for [`Start::Earliest`].
    pub fn as_from(self) -> Option<&'static str> {
        (self == Start::Earliest).then_some(Self::EARLIEST)
    }
}

impl From<Option<Offset>> for Start {
    /// A resume after the cursor, or only new events without one.
    fn from(after: Option<Offset>) -> Self {
        after.map_or(Start::New, Start::After)
    }
}

/// A frame from a client.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientFrame {
    /// Follow a session from `start`: after a cursor, from the log's first retained event,
    /// or only new events.
    Subscribe {
        session: SessionKey,
        start: Start,
        /// The cursor's epoch, as a `subscribed` frame gave it: a resume whose epoch is not
        /// the log's current one is refused with `epoch_changed`.
        epoch: Option<String>,
    },
    Unsubscribe {
        session: SessionKey,
    },
    Publish {
        event: Box<Event>,
    },
    Ping,
    /// Follow a tenant's label feed: the `enriched` annotations of every session of the
    /// tenant whose event scored that label (semantic routing). Realtime only, no cursor.
    FollowLabel {
        tenant: Tenant,
        label: Label,
    },
    UnfollowLabel {
        tenant: Tenant,
        label: Label,
    },
    /// An ephemeral message (token stream, typing, progress): fanned out to the session's
    /// subscribers now, never written to the log, no offset, no ack; shed first under load.
    Ephemeral {
        event: Box<Event>,
    },
    /// Replaces the connection's token before it expires.
    Refresh {
        token: String,
    },
}

/// The JSON shape of a client frame; unknown fields are rejected so typos surface.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFrameIn {
    op: String,
    session: Option<String>,
    label: Option<String>,
    tenant: Option<String>,
    after: Option<u64>,
    from: Option<String>,
    event: Option<Box<RawValue>>,
    token: Option<String>,
    epoch: Option<String>,
}

impl ClientFrame {
    /// Decodes a text (JSON) WebSocket message.
    pub fn from_json(text: &str) -> Result<Self, ProtocolError> {
        let raw: ClientFrameIn = serde_json::from_str(text).map_err(|e| {
            ProtocolError::malformed(format!("frame is not a valid JSON frame: {e}"))
        })?;
        let session = |s: Option<String>| -> Result<SessionKey, ProtocolError> {
            s.ok_or_else(|| ProtocolError::invalid("session", "is required"))?
                .parse()
        };
        if let Some(label) = raw.label {
            let label = Label::new(label)?;
            let tenant = Tenant::new(
                raw.tenant
                    .ok_or_else(|| ProtocolError::invalid("tenant", "is required with label"))?,
            )?;
            return match raw.op.as_str() {
                "subscribe" => Ok(ClientFrame::FollowLabel { tenant, label }),
                "unsubscribe" => Ok(ClientFrame::UnfollowLabel { tenant, label }),
                other => Err(ProtocolError::new(
                    ErrorCode::UnknownOp,
                    format!("op {other:?} takes no label; expected subscribe or unsubscribe"),
                )),
            };
        }
        match raw.op.as_str() {
            "subscribe" => Ok(ClientFrame::Subscribe {
                session: session(raw.session)?,
                start: Start::from_parts(raw.after, raw.from.as_deref())?,
                epoch: raw.epoch.filter(|e| !e.is_empty()),
            }),
            "unsubscribe" => Ok(ClientFrame::Unsubscribe {
                session: session(raw.session)?,
            }),
            "publish" | "ephemeral" => {
                let event = raw
                    .event
                    .ok_or_else(|| ProtocolError::invalid("event", "is required"))?;
                let event = Box::new(cloudevents::from_json(event.get())?);
                Ok(if raw.op == "publish" {
                    ClientFrame::Publish { event }
                } else {
                    ClientFrame::Ephemeral { event }
                })
            }
            "ping" => Ok(ClientFrame::Ping),
            "refresh" => Ok(ClientFrame::Refresh {
                token: raw
                    .token
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| ProtocolError::invalid("token", "is required"))?,
            }),
            other => Err(ProtocolError::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op {other:?}; expected subscribe, unsubscribe, publish, ephemeral, refresh or ping"
                ),
            )),
        }
    }

    /// Decodes a binary (protobuf `agentwire.v1.ClientFrame`) WebSocket message.
    pub fn from_protobuf(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let frame = pb::ClientFrame::decode(bytes).map_err(|e| {
            ProtocolError::malformed(format!("frame is not a valid protobuf ClientFrame: {e}"))
        })?;
        match frame.op {
            Some(pb::client_frame::Op::Subscribe(s)) if !s.label.is_empty() => {
                Ok(ClientFrame::FollowLabel {
                    tenant: Tenant::new(s.tenant)?,
                    label: Label::new(s.label)?,
                })
            }
            Some(pb::client_frame::Op::Unsubscribe(u)) if !u.label.is_empty() => {
                Ok(ClientFrame::UnfollowLabel {
                    tenant: Tenant::new(u.tenant)?,
                    label: Label::new(u.label)?,
                })
            }
            Some(pb::client_frame::Op::Subscribe(s)) => Ok(ClientFrame::Subscribe {
                session: s.session.parse()?,
                start: Start::from_parts(s.after, Some(s.from.as_str()).filter(|f| !f.is_empty()))?,
                epoch: (!s.epoch.is_empty()).then_some(s.epoch),
            }),
            Some(pb::client_frame::Op::Unsubscribe(u)) => Ok(ClientFrame::Unsubscribe {
                session: u.session.parse()?,
            }),
            Some(pb::client_frame::Op::Publish(p)) => {
                let event = p
                    .event
                    .ok_or_else(|| ProtocolError::invalid("event", "is required"))?;
                Ok(ClientFrame::Publish {
                    event: Box::new(Event::try_from(event)?),
                })
            }
            Some(pb::client_frame::Op::Ping(_)) => Ok(ClientFrame::Ping),
            Some(pb::client_frame::Op::Ephemeral(p)) => {
                let event = p
                    .event
                    .ok_or_else(|| ProtocolError::invalid("event", "is required"))?;
                Ok(ClientFrame::Ephemeral {
                    event: Box::new(Event::try_from(event)?),
                })
            }
            Some(pb::client_frame::Op::Refresh(r)) if !r.token.is_empty() => {
                Ok(ClientFrame::Refresh { token: r.token })
            }
            Some(pb::client_frame::Op::Refresh(_)) => {
                Err(ProtocolError::invalid("token", "is required"))
            }
            None => Err(ProtocolError::new(ErrorCode::UnknownOp, "frame has no op")),
        }
    }

    /// Encodes as a JSON text message (used by the Rust client).
    pub fn to_json(&self) -> String {
        match self {
            ClientFrame::Subscribe {
                session,
                start,
                epoch,
            } => {
                let mut frame =
                    serde_json::json!({"op": "subscribe", "session": session.to_string()});
                if let Some(after) = start.after() {
                    frame["after"] = after.0.into();
                }
                if let Some(from) = start.as_from() {
                    frame["from"] = from.into();
                }
                if let Some(epoch) = epoch {
                    frame["epoch"] = epoch.as_str().into();
                }
                frame.to_string()
            }
            ClientFrame::Unsubscribe { session } => {
                format!(r#"{{"op":"unsubscribe","session":"{session}"}}"#)
            }
            ClientFrame::Publish { event } => format!(
                r#"{{"op":"publish","event":{}}}"#,
                cloudevents::to_json(event)
            ),
            ClientFrame::Ping => r#"{"op":"ping"}"#.to_owned(),
            ClientFrame::FollowLabel { tenant, label } => {
                format!(r#"{{"op":"subscribe","tenant":"{tenant}","label":"{label}"}}"#)
            }
            ClientFrame::UnfollowLabel { tenant, label } => {
                format!(r#"{{"op":"unsubscribe","tenant":"{tenant}","label":"{label}"}}"#)
            }
            ClientFrame::Ephemeral { event } => format!(
                r#"{{"op":"ephemeral","event":{}}}"#,
                cloudevents::to_json(event)
            ),
            ClientFrame::Refresh { token } => {
                serde_json::json!({"op": "refresh", "token": token}).to_string()
            }
        }
    }

    /// Encodes as a protobuf binary message.
    pub fn to_protobuf(&self) -> Vec<u8> {
        use pb::client_frame::Op;
        let op = match self {
            ClientFrame::Subscribe {
                session,
                start,
                epoch,
            } => Op::Subscribe(pb::Subscribe {
                session: session.to_string(),
                after: start.after().map(|a| a.0),
                from: start.as_from().unwrap_or_default().to_owned(),
                epoch: epoch.clone().unwrap_or_default(),
                ..Default::default()
            }),
            ClientFrame::Unsubscribe { session } => Op::Unsubscribe(pb::Unsubscribe {
                session: session.to_string(),
                ..Default::default()
            }),
            ClientFrame::FollowLabel { tenant, label } => Op::Subscribe(pb::Subscribe {
                tenant: tenant.to_string(),
                label: label.to_string(),
                ..Default::default()
            }),
            ClientFrame::UnfollowLabel { tenant, label } => Op::Unsubscribe(pb::Unsubscribe {
                tenant: tenant.to_string(),
                label: label.to_string(),
                ..Default::default()
            }),
            ClientFrame::Publish { event } => Op::Publish(pb::Publish {
                event: Some(pb::Event::from(event.as_ref())),
            }),
            ClientFrame::Ping => Op::Ping(pb::Ping {}),
            ClientFrame::Ephemeral { event } => Op::Ephemeral(pb::Publish {
                event: Some(pb::Event::from(event.as_ref())),
            }),
            ClientFrame::Refresh { token } => Op::Refresh(pb::Refresh {
                token: token.clone(),
            }),
        };
        pb::ClientFrame { op: Some(op) }.encode_to_vec()
    }
}

/// The acknowledgement of a durable publish: where Kafka stored the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_seq: Option<u64>,
    pub partition: i32,
    pub offset: Offset,
    /// A retry of an already accepted `(producer_id, producer_seq)`: `partition` and `offset`
    /// are the original ones and nothing was appended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The trace the append was recorded in (32 hex digits), when the event carried a trace
    /// context or the gateway exports traces: the id to look the event up in the trace store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// An error reported to a client without closing the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionKey>,
    /// The event id, when the error answers a publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// With `rate_limited`: milliseconds until the request would be accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// With `sequence_gap`: the `producer_seq` the server expects next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_seq: Option<u64>,
}

impl From<&ProtocolError> for ErrorFrame {
    fn from(err: &ProtocolError) -> Self {
        ErrorFrame {
            code: err.code(),
            message: err.message().to_owned(),
            field: err.field().map(str::to_owned),
            session: None,
            id: None,
            retry_after_ms: None,
            expected_seq: None,
        }
    }
}

/// A frame from the server.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    Subscribed {
        session: SessionKey,
        #[serde(default)]
        offset: Option<Offset>,
        /// The epoch of the session's offsets (the log's identity); resume with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    Unsubscribed {
        session: SessionKey,
    },
    /// A label feed is followed (`{"op":"subscribed","tenant":…,"label":…}`).
    #[serde(rename = "subscribed")]
    LabelSubscribed {
        tenant: Tenant,
        label: Label,
    },
    #[serde(rename = "unsubscribed")]
    LabelUnsubscribed {
        tenant: Tenant,
        label: Label,
    },
    /// One durable event; `event` is the CloudEvents JSON exactly as stored in the log.
    Event {
        session: SessionKey,
        offset: Offset,
        event: Box<RawValue>,
    },
    Ack(Ack),
    Error(ErrorFrame),
    Pong,
    /// The enricher's annotation of the event at `offset` (labels, near duplicate, model),
    /// sent after that event. `annotation` is the whole JSON frame
    /// (`{"op":"enriched",…}`, see [`crate::Enrichment::annotation_json`]).
    #[serde(skip_serializing)]
    Enriched {
        session: SessionKey,
        offset: Offset,
        annotation: Box<RawValue>,
    },
    /// An ephemeral message of a followed session: no offset, never in history.
    Ephemeral {
        session: SessionKey,
        event: Box<RawValue>,
    },
    /// The connection's token was replaced; it now expires at `exp` (Unix seconds).
    Refreshed {
        exp: u64,
    },
}

/// The flat JSON shape of every server frame (serde cannot buffer a `RawValue` inside an
/// internally tagged enum).
#[derive(Deserialize)]
struct ServerFrameIn {
    op: String,
    session: Option<SessionKey>,
    label: Option<String>,
    tenant: Option<String>,
    offset: Option<Offset>,
    event: Option<Box<RawValue>>,
    id: Option<String>,
    producer_seq: Option<u64>,
    partition: Option<i32>,
    code: Option<ErrorCode>,
    message: Option<String>,
    field: Option<String>,
    retry_after_ms: Option<u64>,
    expected_seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    trace_id: Option<String>,
    exp: Option<u64>,
    epoch: Option<String>,
}

/// The JSON `event` frame for a stored event, built without re-parsing the event.
/// `event_json` must be a CloudEvents JSON object as written by [`cloudevents::to_json`].
pub fn event_frame_json(session: &SessionKey, offset: Offset, event_json: &str) -> String {
    format!(r#"{{"op":"event","session":"{session}","offset":{offset},"event":{event_json}}}"#)
}

/// The JSON `ephemeral` frame for an ephemeral event, built without re-parsing the event.
pub fn ephemeral_frame_json(session: &SessionKey, event_json: &str) -> String {
    format!(r#"{{"op":"ephemeral","session":"{session}","event":{event_json}}}"#)
}

impl ServerFrame {
    pub fn to_json(&self) -> String {
        if let ServerFrame::Enriched { annotation, .. } = self {
            return annotation.get().to_owned();
        }
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes a JSON server frame (used by the Rust client).
    pub fn from_json(text: &str) -> Result<Self, ProtocolError> {
        let raw: ServerFrameIn = serde_json::from_str(text)
            .map_err(|e| ProtocolError::malformed(format!("not a server frame: {e}")))?;
        let session = |s: Option<SessionKey>| {
            s.ok_or_else(|| ProtocolError::invalid("session", "is required"))
        };
        let offset =
            |o: Option<Offset>| o.ok_or_else(|| ProtocolError::invalid("offset", "is required"));
        let label_feed = || -> Result<(Tenant, Label), ProtocolError> {
            Ok((
                Tenant::new(raw.tenant.clone().unwrap_or_default())?,
                Label::new(raw.label.clone().unwrap_or_default())?,
            ))
        };
        Ok(match raw.op.as_str() {
            "subscribed" if raw.label.is_some() => {
                let (tenant, label) = label_feed()?;
                ServerFrame::LabelSubscribed { tenant, label }
            }
            "unsubscribed" if raw.label.is_some() => {
                let (tenant, label) = label_feed()?;
                ServerFrame::LabelUnsubscribed { tenant, label }
            }
            "subscribed" => ServerFrame::Subscribed {
                session: session(raw.session)?,
                offset: raw.offset,
                epoch: raw.epoch,
            },
            "unsubscribed" => ServerFrame::Unsubscribed {
                session: session(raw.session)?,
            },
            "event" => ServerFrame::Event {
                session: session(raw.session)?,
                offset: offset(raw.offset)?,
                event: raw
                    .event
                    .ok_or_else(|| ProtocolError::invalid("event", "is required"))?,
            },
            "ack" => ServerFrame::Ack(Ack {
                id: raw.id.unwrap_or_default(),
                producer_seq: raw.producer_seq,
                partition: raw
                    .partition
                    .ok_or_else(|| ProtocolError::invalid("partition", "is required"))?,
                offset: offset(raw.offset)?,
                duplicate: raw.duplicate,
                trace_id: raw.trace_id,
            }),
            "error" => ServerFrame::Error(ErrorFrame {
                code: raw
                    .code
                    .ok_or_else(|| ProtocolError::invalid("code", "is required"))?,
                message: raw.message.unwrap_or_default(),
                field: raw.field,
                session: raw.session,
                id: raw.id,
                retry_after_ms: raw.retry_after_ms,
                expected_seq: raw.expected_seq,
            }),
            "pong" => ServerFrame::Pong,
            "ephemeral" => ServerFrame::Ephemeral {
                session: session(raw.session)?,
                event: raw
                    .event
                    .ok_or_else(|| ProtocolError::invalid("event", "is required"))?,
            },
            "refreshed" => ServerFrame::Refreshed {
                exp: raw
                    .exp
                    .ok_or_else(|| ProtocolError::invalid("exp", "is required"))?,
            },
            "enriched" => ServerFrame::Enriched {
                session: session(raw.session)?,
                offset: offset(raw.offset)?,
                annotation: RawValue::from_string(text.to_owned())
                    .map_err(|e| ProtocolError::malformed(format!("not a server frame: {e}")))?,
            },
            other => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownOp,
                    format!("unknown server op {other:?}"),
                ));
            }
        })
    }

    /// Encodes as a protobuf `agentwire.v1.ServerFrame`.
    pub fn to_protobuf(&self) -> Result<Vec<u8>, ProtocolError> {
        use pb::server_frame::Op;
        let op = match self {
            ServerFrame::Subscribed {
                session,
                offset,
                epoch,
            } => Op::Subscribed(pb::Subscribed {
                session: session.to_string(),
                offset: offset.map(|o| o.0),
                epoch: epoch.clone().unwrap_or_default(),
                ..Default::default()
            }),
            ServerFrame::Unsubscribed { session } => Op::Unsubscribed(pb::Unsubscribed {
                session: session.to_string(),
                ..Default::default()
            }),
            ServerFrame::LabelSubscribed { tenant, label } => Op::Subscribed(pb::Subscribed {
                tenant: tenant.to_string(),
                label: label.to_string(),
                ..Default::default()
            }),
            ServerFrame::LabelUnsubscribed { tenant, label } => {
                Op::Unsubscribed(pb::Unsubscribed {
                    tenant: tenant.to_string(),
                    label: label.to_string(),
                    ..Default::default()
                })
            }
            ServerFrame::Event {
                session,
                offset,
                event,
            } => Op::Event(pb::Delivery {
                session: session.to_string(),
                offset: offset.0,
                event: Some(pb::Event::from(&cloudevents::from_json(event.get())?)),
            }),
            ServerFrame::Ack(ack) => Op::Ack(pb::Ack {
                id: ack.id.clone(),
                producer_seq: ack.producer_seq.unwrap_or(0),
                partition: ack.partition,
                offset: ack.offset.0,
                duplicate: ack.duplicate,
                trace_id: ack.trace_id.clone().unwrap_or_default(),
            }),
            ServerFrame::Error(e) => Op::Error(pb::Error {
                code: e.code.as_str().to_owned(),
                message: e.message.clone(),
                field: e.field.clone().unwrap_or_default(),
                session: e
                    .session
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                id: e.id.clone().unwrap_or_default(),
                retry_after_ms: e.retry_after_ms.unwrap_or(0),
                expected_seq: e.expected_seq.unwrap_or(0),
            }),
            ServerFrame::Pong => Op::Pong(pb::Pong {}),
            ServerFrame::Enriched {
                session,
                offset,
                annotation,
            } => Op::Enriched(pb::Enriched {
                session: session.to_string(),
                offset: offset.0,
                annotation_json: annotation.get().to_owned(),
            }),
            ServerFrame::Ephemeral { session, event } => Op::Ephemeral(pb::EphemeralDelivery {
                session: session.to_string(),
                event: Some(pb::Event::from(&cloudevents::from_json(event.get())?)),
            }),
            ServerFrame::Refreshed { exp } => Op::Refreshed(pb::Refreshed { exp: *exp }),
        };
        Ok(pb::ServerFrame { op: Some(op) }.encode_to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_round_trip_through_json_and_protobuf() {
        let event = cloudevents::from_json(
            r#"{"type":"agent.message","tenant":"t","agenttype":"a","sessionid":"s","text":"hi"}"#,
        )
        .expect("valid");
        let frames = [
            ClientFrame::Subscribe {
                session: "t:a:s".parse().expect("key"),
                start: Start::After(Offset(41)),
                epoch: Some("5f3a09c2".into()),
            },
            ClientFrame::Subscribe {
                session: "t:a:s".parse().expect("key"),
                start: Start::New,
                epoch: None,
            },
            ClientFrame::Subscribe {
                session: "t:a:s".parse().expect("key"),
                start: Start::Earliest,
                epoch: None,
            },
            ClientFrame::Unsubscribe {
                session: "t:a:s".parse().expect("key"),
            },
            ClientFrame::Publish {
                event: Box::new(event),
            },
            ClientFrame::Ping,
            ClientFrame::FollowLabel {
                tenant: Tenant::new("t").expect("tenant"),
                label: Label::new("billing").expect("label"),
            },
            ClientFrame::UnfollowLabel {
                tenant: Tenant::new("t").expect("tenant"),
                label: Label::new("billing").expect("label"),
            },
            ClientFrame::Refresh {
                token: "a.b.c".into(),
            },
        ];
        for frame in frames {
            assert_eq!(
                ClientFrame::from_json(&frame.to_json()).expect("json"),
                frame
            );
            assert_eq!(
                ClientFrame::from_protobuf(&frame.to_protobuf()).expect("pb"),
                frame
            );
        }
    }

    #[test]
    fn bad_client_frames_get_precise_codes() {
        let cases = [
            ("{", ErrorCode::Malformed),
            (r#"{"op":"dance"}"#, ErrorCode::UnknownOp),
            (r#"{"op":"subscribe"}"#, ErrorCode::InvalidField),
            (
                r#"{"op":"subscribe","session":"a:b"}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"op":"subscribe","session":"a:b:c","after":-1}"#,
                ErrorCode::Malformed,
            ),
            (
                r#"{"op":"subscribe","session":"a:b:c","after":18446744073709551615}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"op":"publish","event":{"type":"agent.x"}}"#,
                ErrorCode::InvalidField,
            ),
            (r#"{"op":"ping","extra":true}"#, ErrorCode::Malformed),
            (
                r#"{"op":"subscribe","label":"billing"}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"op":"subscribe","tenant":"t","label":"no spaces"}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"op":"publish","tenant":"t","label":"x"}"#,
                ErrorCode::UnknownOp,
            ),
        ];
        for (text, code) in cases {
            assert_eq!(
                ClientFrame::from_json(text).expect_err(text).code(),
                code,
                "{text}"
            );
        }
        assert_eq!(
            ClientFrame::from_protobuf(&[0xff, 0xff, 0xff])
                .expect_err("garbage")
                .code(),
            ErrorCode::Malformed
        );
    }

    #[test]
    fn subscribe_from_earliest_has_one_shape_in_json_and_protobuf() {
        let session: SessionKey = "t:a:s".parse().expect("key");
        let frame = ClientFrame::Subscribe {
            session: session.clone(),
            start: Start::Earliest,
            epoch: None,
        };
        let json = r#"{"op":"subscribe","session":"t:a:s","from":"earliest"}"#;
        let shape = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("json");
        assert_eq!(shape(&frame.to_json()), shape(json));
        assert_eq!(ClientFrame::from_json(json).expect("json"), frame);
        let pb = pb::ClientFrame {
            op: Some(pb::client_frame::Op::Subscribe(pb::Subscribe {
                session: session.to_string(),
                from: "earliest".into(),
                ..Default::default()
            })),
        };
        assert_eq!(
            ClientFrame::from_protobuf(&pb.encode_to_vec()).expect("pb"),
            frame
        );
    }

    #[test]
    fn old_subscribes_without_from_keep_their_meaning() {
        let new = |after: Option<u64>| pb::ClientFrame {
            op: Some(pb::client_frame::Op::Subscribe(pb::Subscribe {
                session: "t:a:s".into(),
                after,
                ..Default::default()
            })),
        };
        let start = |frame: ClientFrame| match frame {
            ClientFrame::Subscribe { start, .. } => start,
            other => panic!("not a subscribe: {other:?}"),
        };
        let decode = |pb: pb::ClientFrame| {
            start(ClientFrame::from_protobuf(&pb.encode_to_vec()).expect("pb"))
        };
        assert_eq!(decode(new(None)), Start::New);
        assert_eq!(decode(new(Some(0))), Start::After(Offset(0)));
        let json = |text: &str| start(ClientFrame::from_json(text).expect(text));
        assert_eq!(json(r#"{"op":"subscribe","session":"t:a:s"}"#), Start::New);
        assert_eq!(
            json(r#"{"op":"subscribe","session":"t:a:s","after":7,"from":null}"#),
            Start::After(Offset(7))
        );
        assert_eq!(Start::from(Some(Offset(3))), Start::After(Offset(3)));
        assert_eq!(Start::from(None), Start::New);
    }

    #[test]
    fn from_is_refused_with_after_or_with_any_other_value() {
        let refused = [
            r#"{"op":"subscribe","session":"t:a:s","after":4,"from":"earliest"}"#,
            r#"{"op":"subscribe","session":"t:a:s","from":"bogus"}"#,
            r#"{"op":"subscribe","session":"t:a:s","from":"latest"}"#,
            r#"{"op":"subscribe","session":"t:a:s","from":""}"#,
        ];
        for text in refused {
            let err = ClientFrame::from_json(text).expect_err(text);
            assert_eq!(
                (err.code(), err.field()),
                (ErrorCode::InvalidField, Some("from")),
                "{text}"
            );
        }
        let both = pb::ClientFrame {
            op: Some(pb::client_frame::Op::Subscribe(pb::Subscribe {
                session: "t:a:s".into(),
                after: Some(4),
                from: "earliest".into(),
                ..Default::default()
            })),
        };
        let bogus = pb::ClientFrame {
            op: Some(pb::client_frame::Op::Subscribe(pb::Subscribe {
                session: "t:a:s".into(),
                from: "bogus".into(),
                ..Default::default()
            })),
        };
        for frame in [both, bogus] {
            let err = ClientFrame::from_protobuf(&frame.encode_to_vec()).expect_err("refused");
            assert_eq!(
                (err.code(), err.field()),
                (ErrorCode::InvalidField, Some("from"))
            );
        }
        let bogus = Start::from_parts(None, Some("bogus")).expect_err("bogus");
        assert!(bogus.message().contains("earliest"), "{}", bogus.message());
    }

    #[test]
    fn label_feed_answers_round_trip_through_json() {
        let frame = ServerFrame::LabelSubscribed {
            tenant: Tenant::new("t").expect("tenant"),
            label: Label::new("billing").expect("label"),
        };
        let json = frame.to_json();
        assert_eq!(
            json,
            r#"{"op":"subscribed","tenant":"t","label":"billing"}"#
        );
        assert!(matches!(
            ServerFrame::from_json(&json).expect("parse"),
            ServerFrame::LabelSubscribed { .. }
        ));
        assert!(!frame.to_protobuf().expect("pb").is_empty());
    }

    #[test]
    fn the_fast_event_frame_matches_serde() {
        let session: SessionKey = "t:a:s".parse().expect("key");
        let event = r#"{"specversion":"1.0","type":"agent.x"}"#;
        let fast = event_frame_json(&session, Offset(42), event);
        let parsed = ServerFrame::from_json(&fast).expect("parse");
        let ServerFrame::Event {
            session: s,
            offset,
            event: e,
        } = &parsed
        else {
            panic!("not an event frame: {fast}");
        };
        assert_eq!((s, *offset, e.get()), (&session, Offset(42), event));
        let serde = ServerFrame::Event {
            session,
            offset: Offset(42),
            event: RawValue::from_string(event.to_owned()).expect("raw"),
        };
        assert_eq!(serde.to_json(), fast);
    }

    #[test]
    fn the_fast_ephemeral_frame_matches_serde() {
        let session: SessionKey = "t:a:s".parse().expect("key");
        let event = r#"{"specversion":"1.0","type":"agent.typing"}"#;
        let fast = ephemeral_frame_json(&session, event);
        let serde = ServerFrame::Ephemeral {
            session,
            event: RawValue::from_string(event.to_owned()).expect("raw"),
        };
        assert_eq!(serde.to_json(), fast);
        assert!(matches!(
            ServerFrame::from_json(&fast).expect("parse"),
            ServerFrame::Ephemeral { .. }
        ));
    }
}
