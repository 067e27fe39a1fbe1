//! CloudEvents 1.0 JSON format (structured mode): the JSON form of an [`Event`] on the HTTP
//! API, in WebSocket text frames, in Kafka record values and in Valkey.
//!
//! Our attributes are CloudEvents extension attributes, lowercase alphanumeric as the spec
//! requires: `tenant`, `agenttype`, `sessionid`, `producerid`, `producerseq`, `correlationid`,
//! `causationid`, `text`, `traceparent`, `tracestate` (the distributed-tracing extension) and the partitioning extension's `partitionkey`.
//! `producerseq` is written as a decimal string, since a CloudEvents Integer is 32-bit and the
//! sequence is a u64; numbers are accepted on input too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::ProtocolError;
use crate::event::{Data, Event};
use crate::ids::{AgentType, EventType, Offset, ProducerId, SessionId, SessionKey, Tenant};

pub use crate::event::MAX_ATTRIBUTE_LEN;

#[derive(Deserialize)]
#[serde(untagged)]
enum SeqInput {
    Number(u64),
    Text(String),
}

/// An unsigned 64-bit attribute given as a JSON number or a decimal string.
fn unsigned(value: Option<SeqInput>, field: &'static str) -> Result<Option<u64>, ProtocolError> {
    match value {
        None => Ok(None),
        Some(SeqInput::Number(n)) => Ok(Some(n)),
        Some(SeqInput::Text(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| ProtocolError::invalid(field, "must be an unsigned 64-bit integer")),
    }
}

/// The permissive input shape: every attribute optional, so validation can name the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudEventIn {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    time: Option<String>,
    datacontenttype: Option<String>,
    subject: Option<String>,
    tenant: Option<String>,
    agenttype: Option<String>,
    sessionid: Option<String>,
    partitionkey: Option<String>,
    producerid: Option<String>,
    producerseq: Option<SeqInput>,
    producerepoch: Option<SeqInput>,
    correlationid: Option<String>,
    causationid: Option<String>,
    text: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    data: Option<Box<RawValue>>,
    data_base64: Option<String>,
}

#[derive(Serialize)]
struct CloudEventOut<'a> {
    specversion: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    tenant: &'a str,
    agenttype: &'a str,
    sessionid: &'a str,
    partitionkey: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    producerid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producerseq: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producerepoch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlationid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// Serialises an event as a CloudEvents JSON object.
pub fn to_json(event: &Event) -> String {
    let (data, data_base64) = match &event.data {
        Some(Data::Json(raw)) => (Some(raw.as_ref()), None),
        Some(Data::Binary(bytes)) => (None, Some(BASE64.encode(bytes))),
        None => (None, None),
    };
    let out = CloudEventOut {
        specversion: "1.0",
        id: event.id.map(|id| id.to_string()),
        source: &event.source,
        event_type: event.event_type.as_str(),
        time: event.time.as_ref().map(ToString::to_string),
        datacontenttype: event.effective_content_type(),
        subject: event.subject.as_deref(),
        tenant: event.session.tenant.as_str(),
        agenttype: event.session.agent_type.as_str(),
        sessionid: event.session.session_id.as_str(),
        partitionkey: event.session.to_string(),
        producerid: event.producer_id.as_ref().map(ProducerId::as_str),
        producerseq: event.producer_seq.map(|s| s.to_string()),
        producerepoch: event.producer_epoch.map(|e| e.to_string()),
        correlationid: event.correlation_id.as_deref(),
        causationid: event.causation_id.as_deref(),
        traceparent: event.traceparent.as_deref(),
        tracestate: event.tracestate.as_deref(),
        text: event.text.as_deref(),
        data,
        data_base64,
    };
    // Serialising borrowed strings and RawValue cannot fail.
    serde_json::to_string(&out).unwrap_or_default()
}

/// A record of a session's log as its readers get it: the event's JSON as stored, or, for a
/// record that is not a valid event of that session, the server's gap event in its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The CloudEvents JSON to store and deliver at the record's offset.
    pub json: String,
    /// Why the record was replaced by a gap event (`None` for a valid event).
    pub unreadable: Option<&'static str>,
}

/// Reads the value of the record at `partition`/`offset` keyed by `session`. Every record of a
/// session advances its readers' cursors: one that is not a valid event of that session
/// (empty, not UTF-8, not an event, or an event of another session) becomes a gap event
/// ([`gap_event_json`]) so that readers see a coded gap instead of silently nothing.
pub fn read_log_entry(
    session: &SessionKey,
    partition: i32,
    offset: Offset,
    value: Option<&[u8]>,
) -> LogEntry {
    let reason = match value.map(std::str::from_utf8) {
        None => "empty",
        Some(Err(_)) => "not_utf8",
        Some(Ok(json)) => match from_json(json) {
            Ok(event) if &event.session == session => {
                return LogEntry {
                    json: json.to_owned(),
                    unreadable: None,
                };
            }
            Ok(_) => "key_mismatch",
            Err(_) => "not_an_event",
        },
    };
    LogEntry {
        json: gap_event_json(session, partition, offset, reason),
        unreadable: Some(reason),
    }
}

/// The event stored and delivered in place of an unreadable record of `session`'s log: type
/// [`crate::event::GAP_EVENT_TYPE`], source `/agentwire/relay`, a UUID derived from the
/// record's position (the same gap always has the same id), and
/// `{"code":"unreadable_record","reason":…,"partition":…,"offset":…}` as data.
pub fn gap_event_json(
    session: &SessionKey,
    partition: i32,
    offset: Offset,
    reason: &str,
) -> String {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&partition.to_be_bytes());
    id[8..].copy_from_slice(&offset.0.to_be_bytes());
    let data = serde_json::json!({
        "code": "unreadable_record",
        "reason": reason,
        "partition": partition,
        "offset": offset.0,
    });
    let mut event = Event::new(
        session.clone(),
        EventType::new(crate::event::GAP_EVENT_TYPE).unwrap_or_else(|_| unreachable!()),
    );
    event.id = Some(uuid::Builder::from_custom_bytes(id).into_uuid());
    event.source = "/agentwire/relay".to_owned();
    event.data = RawValue::from_string(data.to_string()).ok().map(Data::Json);
    to_json(&event)
}

/// Parses one CloudEvents JSON object.
pub fn from_json(json: &str) -> Result<Event, ProtocolError> {
    let raw: CloudEventIn = serde_json::from_str(json).map_err(|e| {
        ProtocolError::malformed(format!("event is not a valid CloudEvents JSON object: {e}"))
    })?;
    validate(raw)
}

/// Parses a JSON array of CloudEvents (the CloudEvents JSON batch format).
pub fn batch_from_json(json: &str) -> Result<Vec<Event>, ProtocolError> {
    let raws: Vec<Box<RawValue>> = serde_json::from_str(json).map_err(|e| {
        ProtocolError::malformed(format!("body is not a JSON array of events: {e}"))
    })?;
    raws.iter().map(|raw| from_json(raw.get())).collect()
}

fn required(field: &'static str, value: Option<String>) -> Result<String, ProtocolError> {
    value.ok_or_else(|| ProtocolError::invalid(field, "is required"))
}

fn validate(raw: CloudEventIn) -> Result<Event, ProtocolError> {
    match raw.specversion.as_deref() {
        None | Some("1.0") => {}
        Some(_) => return Err(ProtocolError::invalid("specversion", "must be \"1.0\"")),
    }
    let session = SessionKey::new(
        Tenant::new(required("tenant", raw.tenant)?)?,
        AgentType::new(required("agenttype", raw.agenttype)?)?,
        SessionId::new(required("sessionid", raw.sessionid)?)?,
    );
    if let Some(pk) = raw.partitionkey
        && pk != session.to_string()
    {
        return Err(ProtocolError::invalid(
            "partitionkey",
            "must equal tenant:agenttype:sessionid",
        ));
    }
    let event_type = EventType::new(required("type", raw.event_type)?)?;
    let id = match raw.id {
        None => None,
        Some(id) => {
            Some(Uuid::parse_str(&id).map_err(|_| ProtocolError::invalid("id", "must be a UUID"))?)
        }
    };
    let time = match raw.time {
        None => None,
        Some(t) => Some(
            t.parse()
                .map_err(|_| ProtocolError::invalid("time", "must be an RFC 3339 timestamp"))?,
        ),
    };
    let producer_id = raw.producerid.map(ProducerId::new).transpose()?;
    let producer_seq = unsigned(raw.producerseq, "producerseq")?;
    let producer_epoch = unsigned(raw.producerepoch, "producerepoch")?;
    let data = match (raw.data, raw.data_base64) {
        (Some(_), Some(_)) => {
            return Err(ProtocolError::invalid(
                "data_base64",
                "cannot be set together with data",
            ));
        }
        (Some(json), None) => Some(Data::Json(json)),
        (None, Some(b64)) => {
            Some(Data::Binary(BASE64.decode(b64).map_err(|_| {
                ProtocolError::invalid("data_base64", "must be standard base64")
            })?))
        }
        (None, None) => None,
    };
    let event = Event {
        id,
        session,
        event_type,
        source: raw.source.unwrap_or_default(),
        subject: raw.subject,
        producer_id,
        producer_seq,
        producer_epoch,
        correlation_id: raw.correlationid,
        causation_id: raw.causationid,
        time,
        content_type: raw.datacontenttype,
        data,
        text: raw.text,
        traceparent: raw.traceparent,
        tracestate: raw.tracestate,
    };
    event.validate()?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    const FULL: &str = r#"{"specversion":"1.0","id":"0190b8a4-7c1e-7000-8000-000000000001","source":"/agents/planner","type":"agent.tool_called","time":"2026-11-25T10:00:00Z","datacontenttype":"application/json","tenant":"acme","agenttype":"planner","sessionid":"s1","producerid":"p1","producerseq":"7","correlationid":"c1","causationid":"c0","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","text":"look up the invoice","data":{"tool":"search","args":[1,2]}}"#;

    #[test]
    fn full_event_round_trips_byte_for_byte() {
        let event = from_json(FULL).expect("valid");
        assert_eq!(event.producer_seq, Some(7));
        assert_eq!(event.session.to_string(), "acme:planner:s1");
        let again = from_json(&to_json(&event)).expect("re-parse");
        assert_eq!(again, event);
        assert!(to_json(&event).contains(r#""data":{"tool":"search","args":[1,2]}"#));
    }

    #[test]
    fn binary_data_travels_as_base64() {
        let json = r#"{"type":"agent.message","tenant":"t","agenttype":"a","sessionid":"s","datacontenttype":"application/octet-stream","data_base64":"AAEC/w=="}"#;
        let event = from_json(json).expect("valid");
        assert_eq!(event.data, Some(Data::Binary(vec![0, 1, 2, 255])));
        assert!(to_json(&event).contains(r#""data_base64":"AAEC/w==""#));
    }

    #[test]
    fn numeric_producerseq_is_accepted_and_written_as_a_string() {
        let json = r#"{"type":"agent.message","tenant":"t","agenttype":"a","sessionid":"s","producerid":"p","producerseq":18446744073709551615}"#;
        let event = from_json(json).expect("valid");
        assert_eq!(event.producer_seq, Some(u64::MAX));
        assert!(to_json(&event).contains(r#""producerseq":"18446744073709551615""#));
    }

    #[test]
    fn each_invalid_attribute_is_named() {
        let cases = [
            (
                r#"{"type":"agent.message","agenttype":"a","sessionid":"s"}"#,
                "tenant",
            ),
            (
                r#"{"type":"bogus","tenant":"t","agenttype":"a","sessionid":"s"}"#,
                "type",
            ),
            (
                r#"{"type":"agent.x","tenant":"t:x","agenttype":"a","sessionid":"s"}"#,
                "tenant",
            ),
            (
                r#"{"type":"agent.x","tenant":"t","agenttype":"a","sessionid":"s","id":"nope"}"#,
                "id",
            ),
            (
                r#"{"type":"agent.x","tenant":"t","agenttype":"a","sessionid":"s","time":"yesterday"}"#,
                "time",
            ),
            (
                r#"{"type":"agent.x","tenant":"t","agenttype":"a","sessionid":"s","specversion":"0.3"}"#,
                "specversion",
            ),
            (
                r#"{"type":"agent.x","tenant":"t","agenttype":"a","sessionid":"s","producerseq":1}"#,
                "producerid",
            ),
            (
                r#"{"type":"agent.x","tenant":"t","agenttype":"a","sessionid":"s","traceparent":"x"}"#,
                "traceparent",
            ),
            (
                r#"{"type":"agent.x","tenant":"t","agenttype":"a","sessionid":"s","data":1,"data_base64":"AA=="}"#,
                "data_base64",
            ),
        ];
        for (json, field) in cases {
            let err = from_json(json).expect_err(json);
            assert_eq!(err.code(), ErrorCode::InvalidField, "{json}");
            assert_eq!(err.field(), Some(field), "{json}");
        }
    }

    #[test]
    fn unknown_attributes_and_non_objects_are_malformed() {
        for json in [
            r#"{"type":"agent.x","bogus":1}"#,
            "[]",
            "not json",
            r#"{"tenant":5}"#,
        ] {
            assert_eq!(
                from_json(json).expect_err(json).code(),
                ErrorCode::Malformed,
                "{json}"
            );
        }
    }

    #[test]
    fn unreadable_records_become_gap_events_of_their_session() {
        let session: SessionKey = "acme:planner:s1".parse().expect("key");
        let valid = read_log_entry(&session, 2, Offset(9), Some(FULL.as_bytes()));
        assert_eq!((valid.json.as_str(), valid.unreadable), (FULL, None));
        let other: SessionKey = "acme:planner:s2".parse().expect("key");
        for (key, value, reason) in [
            (&session, None, "empty"),
            (&session, Some(&b"\xff"[..]), "not_utf8"),
            (&session, Some(&b"{}"[..]), "not_an_event"),
            (&other, Some(FULL.as_bytes()), "key_mismatch"),
        ] {
            let entry = read_log_entry(key, 2, Offset(9), value);
            assert_eq!(entry.unreadable, Some(reason));
            let gap = from_json(&entry.json).expect("a gap is a valid event");
            assert_eq!(gap.event_type.as_str(), crate::event::GAP_EVENT_TYPE);
            assert_eq!(&gap.session, key);
            assert!(
                entry.json.contains(&format!(r#""reason":"{reason}""#)),
                "{}",
                entry.json
            );
            assert!(
                gap.check_publishable().is_err(),
                "producers may not forge gaps"
            );
            // The same record always gives the same gap (replays stay idempotent).
            assert_eq!(read_log_entry(key, 2, Offset(9), value), entry);
        }
    }

    #[test]
    fn batches_validate_every_member() {
        let ok = format!("[{FULL},{FULL}]");
        assert_eq!(batch_from_json(&ok).expect("valid").len(), 2);
        let bad = format!(r#"[{FULL},{{"type":"agent.x"}}]"#);
        assert_eq!(
            batch_from_json(&bad).expect_err("bad").field(),
            Some("tenant")
        );
    }
}
