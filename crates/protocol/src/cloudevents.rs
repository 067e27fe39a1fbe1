//! CloudEvents 1.0 JSON format (structured mode): the JSON form of an [`Event`] on the HTTP
//! API, in WebSocket text frames, in Kafka record values and in Valkey.
//!
//! Our attributes are CloudEvents extension attributes, lowercase alphanumeric as the spec
//! requires: `tenant`, `agenttype`, `sessionid`, `producerid`, `producerseq`, `correlationid`,
//! `causationid`, `text`, `traceparent` and the partitioning extension's `partitionkey`.
//! `producerseq` is written as a decimal string, since a CloudEvents Integer is 32-bit and the
//! sequence is a u64; numbers are accepted on input too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::ProtocolError;
use crate::event::{Data, Event, is_json_media_type, is_valid_traceparent};
use crate::ids::{AgentType, EventType, ProducerId, SessionId, SessionKey, Tenant};

/// Longest `text`, `source`, `subject` or correlation attribute accepted, in bytes.
pub const MAX_ATTRIBUTE_LEN: usize = 64 * 1024;

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
        text: event.text.as_deref(),
        data,
        data_base64,
    };
    // Serialising borrowed strings and RawValue cannot fail.
    serde_json::to_string(&out).unwrap_or_default()
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

fn bounded(field: &'static str, value: Option<String>) -> Result<Option<String>, ProtocolError> {
    match value {
        Some(v) if v.len() > MAX_ATTRIBUTE_LEN => Err(ProtocolError::invalid(
            field,
            format!("is longer than {MAX_ATTRIBUTE_LEN} bytes"),
        )),
        other => Ok(other),
    }
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
    if (producer_seq.is_some() || producer_epoch.is_some()) && producer_id.is_none() {
        return Err(ProtocolError::invalid(
            "producerid",
            "is required when producerseq or producerepoch is set",
        ));
    }
    if producer_seq == Some(0) {
        return Err(ProtocolError::invalid(
            "producerseq",
            "starts at 1 (0 means unsequenced; leave it out)",
        ));
    }
    if producer_epoch.is_some() && producer_seq.is_none() {
        return Err(ProtocolError::invalid(
            "producerseq",
            "is required when producerepoch is set",
        ));
    }
    let traceparent = raw.traceparent;
    if let Some(tp) = &traceparent
        && !is_valid_traceparent(tp)
    {
        return Err(ProtocolError::invalid(
            "traceparent",
            "must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)",
        ));
    }
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
    if let (Some(Data::Json(_)), Some(ct)) = (&data, &raw.datacontenttype)
        && !is_json_media_type(ct)
        && !ct.starts_with("text/")
    {
        return Err(ProtocolError::invalid(
            "datacontenttype",
            "must be a JSON or text media type when data is JSON; use data_base64 for other bytes",
        ));
    }
    Ok(Event {
        id,
        session,
        event_type,
        source: bounded("source", raw.source)?.unwrap_or_default(),
        subject: bounded("subject", raw.subject)?,
        producer_id,
        producer_seq,
        producer_epoch,
        correlation_id: bounded("correlationid", raw.correlationid)?,
        causation_id: bounded("causationid", raw.causationid)?,
        time,
        content_type: raw.datacontenttype,
        data,
        text: bounded("text", raw.text)?,
        traceparent,
    })
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
