//! The domain event: what producers publish, the log stores and subscribers receive.
//! Construction goes through the codecs (`cloudevents`, `pb`); both end in the one
//! [`Event::validate`], so an event valid in one encoding is valid in every other, and the
//! relay (which re-reads the log strictly) accepts every event the gateway acknowledged.

use std::time::SystemTime;

use prost_types::Timestamp;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::ProtocolError;
use crate::ids::{EventType, ProducerId, SessionKey};

/// Longest `text`, `source`, `subject` or correlation attribute accepted, in bytes.
pub const MAX_ATTRIBUTE_LEN: usize = 64 * 1024;

/// The event type the relay writes in place of a log record of a session that is not a
/// valid event (see [`crate::cloudevents::gap_event_json`]). Producers may not publish it.
pub const GAP_EVENT_TYPE: &str = "agent.gap";

/// Event types only the server writes: gaps, session state changes (which the relay puts
/// back into Valkey, so a client must not forge one) and task outcomes sent to `reply_to`.
pub const SERVER_EVENT_TYPES: [&str; 3] =
    [GAP_EVENT_TYPE, "agent.session.state", "agent.task.result"];

/// The payload of an event, as CloudEvents distinguishes it.
#[derive(Clone, Debug)]
pub enum Data {
    /// JSON data (`data` in CloudEvents JSON), kept as the producer's exact text.
    Json(Box<RawValue>),
    /// Opaque bytes (`data_base64` in CloudEvents JSON).
    Binary(Vec<u8>),
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Data::Json(a), Data::Json(b)) => a.get() == b.get(),
            (Data::Binary(a), Data::Binary(b)) => a == b,
            _ => false,
        }
    }
}

/// One agent event. `id` and `time` are `None` only before the gateway stamps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: Option<Uuid>,
    pub session: SessionKey,
    pub event_type: EventType,
    /// CloudEvents `source`; empty means "derive from the session".
    pub source: String,
    pub subject: Option<String>,
    pub producer_id: Option<ProducerId>,
    /// Per-producer sequence number; `None` for unsequenced producers.
    pub producer_seq: Option<u64>,
    /// The producer's epoch (from `POST /v1/producers/…/epoch`); 0 when absent. A newer
    /// epoch fences off every older one.
    pub producer_epoch: Option<u64>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub time: Option<Timestamp>,
    pub content_type: Option<String>,
    pub data: Option<Data>,
    /// Natural-language text for the enricher.
    pub text: Option<String>,
    /// W3C trace context of the event's creation (`00-<trace-id>-<span-id>-<flags>`), the
    /// CloudEvents distributed-tracing extension.
    pub traceparent: Option<String>,
    /// W3C `tracestate` (vendor entries) that goes with `traceparent`.
    pub tracestate: Option<String>,
}

impl Event {
    /// A minimal event, for producers building events in code.
    pub fn new(session: SessionKey, event_type: EventType) -> Self {
        Self {
            id: None,
            session,
            event_type,
            source: String::new(),
            subject: None,
            producer_id: None,
            producer_seq: None,
            producer_epoch: None,
            correlation_id: None,
            causation_id: None,
            time: None,
            content_type: None,
            data: None,
            text: None,
            traceparent: None,
            tracestate: None,
        }
    }

    /// Fills what the producer left out: a UUIDv7 id, the receive time and a source
    /// (`/agentwire/<tenant>/<agent_type>/<session_id>`).
    pub fn stamp(&mut self, now: SystemTime) {
        if self.id.is_none() {
            self.id = Some(Uuid::now_v7());
        }
        if self.time.is_none() {
            self.time = Some(Timestamp::from(now));
        }
        if self.source.is_empty() {
            let s = &self.session;
            self.source = format!("/agentwire/{}/{}/{}", s.tenant, s.agent_type, s.session_id);
        }
    }

    /// Checks every rule of the contract that the field types alone do not: attribute sizes,
    /// the producer-sequence rules, the trace context and the data's media type. Every decoder
    /// calls it; an event that passes it is accepted everywhere.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        for (field, value) in [
            ("source", Some(self.source.as_str())),
            ("subject", self.subject.as_deref()),
            ("correlationid", self.correlation_id.as_deref()),
            ("causationid", self.causation_id.as_deref()),
            ("text", self.text.as_deref()),
        ] {
            if value.is_some_and(|v| v.len() > MAX_ATTRIBUTE_LEN) {
                return Err(ProtocolError::invalid(
                    field,
                    format!("is longer than {MAX_ATTRIBUTE_LEN} bytes"),
                ));
            }
        }
        if (self.producer_seq.is_some() || self.producer_epoch.is_some())
            && self.producer_id.is_none()
        {
            return Err(ProtocolError::invalid(
                "producerid",
                "is required when producerseq or producerepoch is set",
            ));
        }
        if self.producer_seq == Some(0) {
            return Err(ProtocolError::invalid(
                "producerseq",
                "starts at 1 (0 means unsequenced; leave it out)",
            ));
        }
        if self.producer_epoch.is_some() && self.producer_seq.is_none() {
            return Err(ProtocolError::invalid(
                "producerseq",
                "is required when producerepoch is set",
            ));
        }
        if let Some(tp) = &self.traceparent
            && !is_valid_traceparent(tp)
        {
            return Err(ProtocolError::invalid(
                "traceparent",
                "must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)",
            ));
        }
        if let Some(ts) = &self.tracestate
            && (self.traceparent.is_none() || !is_valid_tracestate(ts))
        {
            return Err(ProtocolError::invalid(
                "tracestate",
                "must be a W3C tracestate (at most 32 comma-separated key=value entries, 512 bytes) next to a traceparent",
            ));
        }
        if let (Some(Data::Json(_)), Some(ct)) = (&self.data, &self.content_type)
            && !is_json_media_type(ct)
            && !ct.starts_with("text/")
        {
            return Err(ProtocolError::invalid(
                "datacontenttype",
                "must be a JSON or text media type when data is JSON; use data_base64 for other bytes",
            ));
        }
        Ok(())
    }

    /// Refuses what only the server may write ([`SERVER_EVENT_TYPES`] and the
    /// `agent.registry.` types); checked on publish, not on decode, since subscribers decode
    /// the server's events too.
    pub fn check_publishable(&self) -> Result<(), ProtocolError> {
        let name = self.event_type.as_str();
        if SERVER_EVENT_TYPES.contains(&name) || name.starts_with("agent.registry.") {
            return Err(ProtocolError::invalid(
                "type",
                format!("{name} is reserved for the server"),
            ));
        }
        Ok(())
    }

    /// The media type of `data`, with CloudEvents' default for JSON data.
    pub fn effective_content_type(&self) -> Option<&str> {
        match (&self.content_type, &self.data) {
            (Some(ct), _) => Some(ct.as_str()),
            (None, Some(Data::Json(_))) => Some("application/json"),
            _ => None,
        }
    }
}

/// The media type without parameters, lowercased: `Application/JSON; charset=utf-8` → `application/json`.
pub fn media_type_essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether `content_type` names a JSON media type (`application/json`, `*/*+json`, `text/json`).
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = media_type_essence(content_type);
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Checks a W3C `tracestate` value for shape: printable ASCII, at most 512 bytes and 32
/// `key=value` list members.
pub fn is_valid_tracestate(value: &str) -> bool {
    value.len() <= 512
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && value.split(',').filter(|m| !m.trim().is_empty()).count() <= 32
        && value
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .all(|m| {
                m.split_once('=')
                    .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
            })
}

/// Checks a W3C `traceparent` header value for shape (version 00).
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}
